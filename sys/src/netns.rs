//! Network namespaces: open one by path (checking that it is one), run code inside it on a
//! dedicated thread, read its cookie.

use crate::cvt;
use std::{
    ffi::CString,
    fs::OpenOptions,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why a path could not be used as a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist (did the pod go away?)")]
    NotFound { path: PathBuf },
    #[error(
        "{path} is not a network namespace (expected e.g. /proc/<pid>/ns/net or /run/netns/<name>)"
    )]
    NotNetns { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot enter network namespace {path}: {source} (entering a netns needs CAP_SYS_ADMIN)"
    )]
    Enter { path: PathBuf, source: io::Error },
}

/// An open handle on a network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks, with the `NS_GET_NSTYPE` ioctl, that it is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        // Non-blocking: a FIFO handed in as a netns path must be refused at once, not waited
        // on by whoever holds the agent's lock.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => NetnsError::NotFound { path: path.clone() },
                _ => NetnsError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let fd = OwnedFd::from(file);
        Self::from_fd(fd, path)
    }

    /// Wraps an already open fd (e.g. one received over a Unix socket), checking it.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Result<Self, NetnsError> {
        // SAFETY: ioctl with no argument on an fd we own.
        let ty = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
        if ty != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns { path });
        }
        Ok(Self { fd, path })
    }

    /// The path this namespace was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets `f` creates belong to
    /// it. A fresh thread is used so that no pooled thread is left in the wrong namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        let fd = self.fd.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(fd).map_err(|source| NetnsError::Enter {
                    path: self.path.clone(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A second fd on the same namespace (e.g. to move into another thread).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Runs `f` on the *calling* thread inside this namespace, then moves the thread back to
    /// `home`. Cheap (two `setns`), for creating a socket on an async worker thread. If the
    /// way back fails the process aborts: a thread stranded in a pod's namespace would
    /// silently misroute everything it does next.
    pub fn enter_briefly<R>(&self, home: &Netns, f: impl FnOnce() -> R) -> Result<R, NetnsError> {
        enter(self.fd.as_fd()).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        // Returns home on every exit, a panic in `f` included.
        struct Home<'a>(BorrowedFd<'a>);
        impl Drop for Home<'_> {
            fn drop(&mut self) {
                if enter(self.0).is_err() {
                    std::process::abort();
                }
            }
        }
        let _home = Home(home.fd.as_fd());
        Ok(f())
    }

    /// The kernel's cookie for this namespace (what `bpf_get_netns_cookie` returns).
    pub fn cookie(&self) -> Result<u64, NetnsError> {
        let path = self.path.clone();
        self.run(|| {
            let sock = crate::sockopt::udp_socket()?;
            crate::sockopt::netns_cookie(sock.as_fd())
        })?
        .map_err(|source| NetnsError::Enter { path, source })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// True when the calling thread's network namespace has an interface called `name`.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Moves the calling thread into the network namespace `fd`.
pub fn enter(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads its integer arguments.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Opens the calling thread's current network namespace (to return to it, or to compare).
pub fn current() -> io::Result<OwnedFd> {
    open_raw(Path::new("/proc/thread-self/ns/net"))
}

fn open_raw(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: `c` is a valid C string; the returned fd is owned by us.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = Netns::open("/proc/self/status").unwrap_err();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let p = std::env::temp_dir().join(format!("amesh-netns-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens it: a blocking open would hang here for good.
        let err = Netns::open(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
    }

    #[test]
    fn a_missing_path_is_not_found() {
        let err = Netns::open("/nonexistent/amesh/netns").unwrap_err();
        assert!(matches!(err, NetnsError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn own_netns_opens_and_has_a_cookie() {
        let ns = Netns::open("/proc/self/ns/net").expect("own netns");
        // Entering one's own namespace needs CAP_SYS_ADMIN like any other.
        match ns.cookie() {
            Ok(cookie) => assert_ne!(cookie, 0),
            Err(e) => panic!("reading the netns cookie failed (tests run as root): {e}"),
        }
    }
}
