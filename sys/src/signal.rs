//! Run a cleanup when the process is told to stop (SIGINT, SIGTERM, SIGHUP), then die of
//! that signal as if it had not been handled.
//!
//! The handler only writes the signal number to a pipe (async-signal-safe); a thread reads it
//! and runs the cleanup in ordinary code.

use std::{
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    sync::OnceLock,
};

static WRITE_FD: OnceLock<i32> = OnceLock::new();

extern "C" fn on_signal(signo: libc::c_int) {
    if let Some(&fd) = WRITE_FD.get() {
        let b = signo as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs the handlers once per process; `cleanup` runs on a helper thread when a
/// termination signal arrives, after which the process exits with that signal.
pub fn on_terminate(cleanup: fn()) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    if WRITE_FD.get().is_some() {
        return Ok(());
    }
    // SAFETY: pipe2 fills the two-element array.
    crate::cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created; the read end is owned by the thread below, the write
    // end lives for the whole process (the handler may use it at any time).
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    if WRITE_FD.set(fds[1]).is_err() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("amesh-signals".into())
        .spawn(move || {
            let mut pipe = std::fs::File::from(read_end);
            let mut b = [0u8; 1];
            if pipe.read_exact(&mut b).is_ok() {
                cleanup();
                let signo = i32::from(b[0]);
                // SAFETY: restore the default action and re-raise so the exit status says which
                // signal ended us.
                unsafe {
                    libc::signal(signo, libc::SIG_DFL);
                    libc::raise(signo);
                }
            }
        })?;
    for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls write(2).
        unsafe {
            libc::signal(
                signo,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    Ok(())
}
