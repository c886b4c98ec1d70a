//! A long-running process the mesh starts outside any pod (a ztunnel, a node agent, the
//! control plane): its stderr goes to a log file, it is killed when dropped, and also when
//! this process gets Ctrl-C or SIGTERM (nothing else would stop it then).

use crate::BedError;
use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stderr to `log` (created or truncated); `what` names it in errors.
    pub fn spawn(mut cmd: Command, log: PathBuf, what: &str) -> Result<Self, BedError> {
        if crate::bed::terminating() {
            return Err(crate::mesh::failed(
                format!("starting {what}"),
                "the run is stopping",
            ));
        }
        let out = std::fs::File::create(&log).map_err(BedError::io(format!("{what} log file")))?;
        // Even a run killed outright (no cleanup) takes its daemons with it.
        amesh_sys::spawn::die_with_parent(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(BedError::io(format!("starting {what}")))?;
        crate::bed::track_child(child.id());
        Ok(Self { child, log })
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `find` recognises something in the log (and returns it); fails if the
    /// process exits first or `limit` passes, quoting the log.
    pub fn wait_log<T>(
        &mut self,
        what: &str,
        limit: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> Result<T, BedError> {
        let outcome = crate::eventually(what, limit, || {
            let log = self.log();
            if let Some(found) = find(&log) {
                return Ok(Ok(found));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => Ok(Err((status, log))),
                _ => Err(log),
            }
        })?;
        outcome.map_err(|(status, log)| {
            crate::bed::untrack_child(self.child.id());
            crate::mesh::failed(format!("{what}: exited ({status})"), log)
        })
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = crate::eventually("the process exiting", limit, || {
            match self.child.try_wait() {
                Ok(Some(status)) => Ok(status),
                _ => Err("still running"),
            }
        })
        .ok()?;
        crate::bed::untrack_child(self.child.id());
        Some(status)
    }
}

impl Daemon {
    /// Kills it now (as a crash would) and reaps it; it is no longer tracked, so a later
    /// Ctrl-C cannot hit another process that got its pid.
    pub fn stop(&mut self) {
        crate::bed::untrack_child(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
