//! The few places where amesh calls the kernel directly. All of amesh's `unsafe` outside the
//! kernel programs lives here, each call wrapped in a small safe function.
//!
//! - [`netns`]: open, verify and enter network namespaces, read their cookies.
//! - [`sockopt`]: socket options the mesh needs (`SO_MARK`, `SO_COOKIE`, `SO_NETNS_COOKIE`).
//! - [`file`]: read configuration files without blocking on FIFOs, bounded in size.
//! - [`fs`]: which filesystem a path is on (bpffs, cgroup2), and effective uid.
//! - [`bpf`]: `BPF_PROG_TEST_RUN`, which aya does not wrap.
//! - [`packet`]: raw `AF_PACKET` sockets, to capture what crosses a test network.
//! - [`seqpacket`]: Unix SEQPACKET sockets carrying fds (the ZDS transport).
//! - [`signal`]: run cleanup when the process is told to stop (Ctrl-C, SIGTERM).
//! - [`spawn`]: async-signal-safe steps for a child between fork and exec.

pub mod bpf;
pub mod file;
pub mod fs;
pub mod netns;
pub mod packet;
pub mod seqpacket;
pub mod signal;
pub mod sockopt;
pub mod spawn;

use std::io;

/// Turns a libc return value into an `io::Result`, reading `errno` on `-1`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
