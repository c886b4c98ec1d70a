//! A process running inside a pod: its output lines arrive on a channel, and it is killed
//! when dropped.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ExitStatus},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    label: String,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl PodProcess {
    pub(crate) fn new(mut child: Child, label: String) -> Self {
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Collected as it comes, so a test can watch a running process's stderr.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => sink
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            });
        }
        Self {
            child,
            label,
            lines,
            stderr,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it was started as (for messages).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Writes a line to its stdin (spawned with [`crate::Pod::spawn_interactive`]).
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is not piped"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// The next line it printed, waiting up to `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits up to `timeout` for it to exit (killing it after that) and returns its status
    /// with the lines it printed that were not read yet. Fails if it had to be killed.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>), String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "{} did not finish within {timeout:?}; stderr: {}",
                        self.label,
                        self.stderr()
                    ));
                }
                Err(e) => return Err(format!("waiting for {}: {e}", self.label)),
            }
        };
        // The reader thread ends at EOF; collect everything it forwarded.
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        Ok((status, lines))
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
