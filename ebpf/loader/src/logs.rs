//! Forwards the kernel programs' aya-log records to `tracing`. Only started when debug logs
//! are asked for; otherwise the programs are loaded with logging switched off, so logging costs
//! one load and compare on their hot paths.

use aya::Ebpf;
use aya_log::EbpfLogger;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// `AYA_LOG_LEVEL` values (aya-log-common's `Level`): 0 = off, 4 = debug.
pub(crate) const LEVEL_OFF: u8 = 0;
pub(crate) const LEVEL_DEBUG: u8 = 4;

struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "amesh_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "amesh_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "amesh_ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "amesh_ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "amesh_ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// A thread draining the programs' log ring buffer; stops when dropped.
#[derive(Debug)]
pub(crate) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    pub(crate) fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "eBPF debug logs unavailable");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("amesh-ebpf-log".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    logger.flush();
                    std::thread::sleep(Duration::from_millis(100));
                }
                logger.flush();
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
