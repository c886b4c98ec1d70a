//! ztunnel's control runtime: one worker thread of its own for the xDS client (or the file
//! watch), certificate fetch and renewal, and the admin endpoints. The data path runs on the
//! caller's runtime, so control work, however much arrives, only ever competes for this one
//! thread.

use tokio::runtime::{Builder, Handle, Runtime};

#[derive(Debug)]
pub struct ControlRuntime {
    handle: Handle,
    /// Taken only by `drop`.
    runtime: Option<Runtime>,
}

impl ControlRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ztunnel-control")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ControlRuntime {
    /// Stops it without waiting: a runtime dropped the ordinary way blocks until its tasks
    /// end, which is not allowed from inside the data path's runtime.
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}
