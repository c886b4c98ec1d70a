//! A cgroup v2 directory for one bed's pod processes: the outbound capture programs attach
//! here, so the shared machine's own cgroups are never touched.

use crate::BedError;
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug)]
pub(crate) struct TestCgroup {
    path: PathBuf,
    /// `cgroup.procs`, open for writing: a child writes "0" to it to join.
    procs: File,
}

impl TestCgroup {
    pub(crate) fn create(root: &Path, name: &str) -> Result<Self, BedError> {
        let path = root.join(name);
        std::fs::create_dir(&path)
            .map_err(BedError::io(format!("creating cgroup {}", path.display())))?;
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(BedError::io("opening cgroup.procs"))?;
        Ok(Self { path, procs })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn procs(&self) -> &File {
        &self.procs
    }
}

/// Kills every process in the cgroup at `path` and removes it with any child cgroups.
/// Missing is fine.
pub(crate) fn remove(path: &Path) -> Result<(), BedError> {
    if !path.exists() {
        return Ok(());
    }
    let children =
        std::fs::read_dir(path).map_err(BedError::io(format!("reading {}", path.display())))?;
    for child in children
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        remove(&child.path())?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        // cgroup.kill (Linux 5.14+) kills the whole cgroup at once; else one pid at a time.
        let killed = File::options()
            .write(true)
            .open(path.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"))
            .is_ok();
        if !killed {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
        if Instant::now() > deadline {
            return Err(BedError::Command {
                command: format!("emptying cgroup {}", path.display()),
                stderr: format!("processes still running: {}", pids.trim()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The kernel may take a moment to let go of exited members.
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(BedError::io(format!("removing cgroup {}", path.display()))(
                    e,
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
