//! Socket options the mesh reads and sets.

use crate::cvt;
use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `SO_NETNS_COOKIE` (Linux 5.14+), not in every libc release.
const SO_NETNS_COOKIE: libc::c_int = 71;

fn get_u64(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: value/len point at a u64 and its size, as getsockopt expects.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The cookie of the network namespace the socket lives in.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    get_u64(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE)
}

/// The socket's own cookie (what `bpf_get_socket_cookie` returns).
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    get_u64(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// Sets `SO_MARK` (needs CAP_NET_ADMIN). ztunnel marks its own sockets so capture skips them.
pub fn set_mark(fd: BorrowedFd<'_>, mark: u32) -> io::Result<()> {
    // SAFETY: passes a pointer to a u32 and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            mem::size_of::<u32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A throwaway UDP socket (to ask the kernel about the current namespace).
pub fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned value.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn cookies_are_stable_and_distinct() {
        let a = udp_socket().expect("socket");
        let b = udp_socket().expect("socket");
        let ca = socket_cookie(a.as_fd()).expect("cookie");
        assert_eq!(ca, socket_cookie(a.as_fd()).expect("cookie"));
        assert_ne!(ca, socket_cookie(b.as_fd()).expect("cookie"));
        assert_eq!(
            netns_cookie(a.as_fd()).expect("netns cookie"),
            netns_cookie(b.as_fd()).expect("netns cookie")
        );
    }
}
