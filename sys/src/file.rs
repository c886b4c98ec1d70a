//! Reading configuration files without ever blocking on them: only regular files are read,
//! opened non-blocking (a FIFO or device named like a config file must not wedge a daemon),
//! and never more than a caller's limit.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is a {kind}, not a regular file; only regular files are read")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than the {limit}-byte limit")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Reads the whole of `path` if it is a regular file of at most `limit` bytes. Symbolic links
/// are followed (Kubernetes mounts ConfigMaps as links into a `..data` directory). The open is
/// non-blocking and the type is checked on the opened descriptor, so a FIFO swapped in after
/// a directory listing is still refused rather than waited on.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadFileError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ReadFileError::NotFound { path: path.into() },
        _ => ReadFileError::Io {
            path: path.into(),
            source,
        },
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ReadFileError::NotRegular {
            path: path.into(),
            kind: kind_name(ft),
        });
    }
    if meta.len() > limit {
        return Err(ReadFileError::TooLarge {
            path: path.into(),
            limit,
        });
    }
    read_bounded(file, limit).map_err(io_err)?.ok_or_else(|| {
        // It grew between the size check and the read.
        ReadFileError::TooLarge {
            path: path.into(),
            limit,
        }
    })
}

/// Reads `file` to its end, or `None` when it holds more than `limit` bytes.
fn read_bounded(file: File, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// A word for what a path is, for messages.
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("amesh-sys-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let p = scratch("ok");
        std::fs::write(&p, b"a: 1\n").unwrap();
        assert_eq!(read_regular(&p, 100).unwrap(), b"a: 1\n");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let p = scratch("fifo");
        let c = CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens it: a blocking open would hang this test forever.
        let err = read_regular(&p, 100).unwrap_err();
        assert!(
            matches!(err, ReadFileError::NotRegular { kind: "FIFO", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("is a FIFO, not a regular file"));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let p = scratch("big");
        std::fs::write(&p, vec![b'x'; 101]).unwrap();
        let err = read_regular(&p, 100).unwrap_err();
        assert!(
            matches!(err, ReadFileError::TooLarge { limit: 100, .. }),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_directory_and_a_missing_path_are_named() {
        let err = read_regular(&std::env::temp_dir(), 100).unwrap_err();
        assert!(
            matches!(
                err,
                ReadFileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{err}"
        );
        let err = read_regular(Path::new("/nonexistent/amesh.yaml"), 100).unwrap_err();
        assert!(matches!(err, ReadFileError::NotFound { .. }), "{err}");
    }
}

/// When a file was last changed, as far as its metadata tells: a watcher reads the file again
/// only when this differs. Device and inode catch a file replaced by rename (how editors and
/// Kubernetes' ConfigMap mounts write), ctime a change that kept size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of `path` (following links), `None` if it cannot be examined.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}
