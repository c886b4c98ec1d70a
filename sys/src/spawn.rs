//! Steps a child process takes between `fork` and `exec` to become a "pod" process: enter the
//! pod's network namespace and join a cgroup. Only async-signal-safe calls on values prepared
//! before the fork (no allocation), as `Command::pre_exec` requires.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    os::unix::process::CommandExt,
    process::Command,
};

/// Makes `cmd`'s child enter `netns` and, when given, join the cgroup whose `cgroup.procs` is
/// open as `cgroup_procs`. The fds must stay open until the child is spawned.
pub fn into_pod(cmd: &mut Command, netns: BorrowedFd<'_>, cgroup_procs: Option<BorrowedFd<'_>>) {
    let netns = netns.as_raw_fd();
    let procs = cgroup_procs.map(|fd| fd.as_raw_fd());
    // SAFETY: the closure only calls setns(2) and write(2) on integers and a static buffer,
    // both async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = procs {
                // Writing "0" moves the writing process into the cgroup.
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s child get SIGKILL when the thread that spawned it ends (`PR_SET_PDEATHSIG`),
/// so that helper processes never outlive a test or demo killed outright. Spawn from a thread
/// that lives as long as the child should.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl(2) with integer arguments, async-signal-safe,
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
