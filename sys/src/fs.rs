//! Which filesystem a path is on, and who we are.

use std::{ffi::CString, io, mem, os::unix::ffi::OsStrExt, path::Path};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The `f_type` of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: statfs fills the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { mem::zeroed() };
    crate::cvt(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64)
}

/// True when `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// True when `path` is on a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC)
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}

/// The first cgroup v2 mount point in `/proc/mounts` (e.g. `/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one). Never hard-code one.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}

/// Switches only the calling thread to `uid` (real, effective and saved), dropping its
/// capabilities. The raw syscall is used on purpose: libc's `setresuid` changes every thread.
/// Used to check how amesh behaves without privileges; the thread cannot regain them.
pub fn become_user_on_this_thread(uid: u32) -> std::io::Result<()> {
    // SAFETY: setresuid only reads its integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    crate::cvt(ret as libc::c_int).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_neither_bpffs_nor_cgroup2() {
        assert!(!is_bpffs(Path::new("/proc")));
        assert!(!is_cgroup2(Path::new("/proc")));
        assert!(fs_magic(Path::new("/nonexistent-amesh")).is_err());
    }
}
