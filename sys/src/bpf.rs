//! `BPF_PROG_TEST_RUN`: run a loaded program on a context we build, without real traffic.
//! aya 0.14 does not wrap it; the kernel supports it for `sk_lookup` among others.

use crate::cvt;
use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `bpf(cmd, attr, sizeof(attr))`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` expects, and every pointer in it must be
/// valid for what the kernel reads and writes there, for the duration of the call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: per the function contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            mem::size_of::<T>() as u32,
        )
    };
    cvt(ret as libc::c_int)
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct bpf_sk_lookup` as the kernel reads it for a test run. Addresses and `remote_port`
/// are in network byte order, `local_port` in host order; `cookie` is filled on output with
/// the cookie of the socket the program selected (0 if none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkLookupCtx {
    pub cookie: u64,
    pub family: u32,
    pub protocol: u32,
    pub remote_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub remote_port: u16,
    pub _pad: u16,
    pub local_ip4: u32,
    pub local_ip6: [u32; 4],
    pub local_port: u32,
    /// Must be zero on input (the kernel rejects anything after `local_port`).
    pub ingress_ifindex: u32,
    pub _pad2: u32,
}
const _: () = assert!(mem::size_of::<SkLookupCtx>() == 72);

/// Result of an `sk_lookup` test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkLookupRun {
    /// The program's verdict (`SK_PASS` = 1, `SK_DROP` = 0).
    pub verdict: u32,
    /// Cookie of the selected socket, 0 when the program selected none.
    pub selected_cookie: u64,
}

/// Runs an `sk_lookup` program once on `ctx` in the caller's network namespace.
pub fn test_run_sk_lookup(prog: BorrowedFd<'_>, ctx: &SkLookupCtx) -> io::Result<SkLookupRun> {
    let mut ctx_in = *ctx;
    ctx_in.cookie = 0;
    let mut ctx_out = SkLookupCtx::default();
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        repeat: 1,
        ctx_size_in: mem::size_of::<SkLookupCtx>() as u32,
        ctx_size_out: mem::size_of::<SkLookupCtx>() as u32,
        ctx_in: (&ctx_in as *const SkLookupCtx) as u64,
        ctx_out: (&mut ctx_out as *mut SkLookupCtx) as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` describes buffers that live across the call, with their true sizes.
    unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(SkLookupRun {
        verdict: attr.retval,
        selected_cookie: ctx_out.cookie,
    })
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// Attach points [`attached_count`] can ask about (`enum bpf_attach_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    CgroupSockOps = 3,
    CgroupInet4Connect = 10,
    CgroupInet6Connect = 11,
    CgroupUdp4Sendmsg = 14,
    CgroupUdp6Sendmsg = 15,
    CgroupUdp4Recvmsg = 19,
    CgroupUdp6Recvmsg = 20,
    SkLookup = 36,
}

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How many programs are attached to `target` (a cgroup directory or a netns fd) at
/// `attach_type`. Used to prove that nothing was attached twice.
pub fn attached_count(target: BorrowedFd<'_>, attach_type: AttachType) -> io::Result<u32> {
    let mut attr = QueryAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_type: attach_type as u32,
        ..QueryAttr::default()
    };
    // SAFETY: `attr` lives across the call; with `prog_ids` null the kernel only writes the
    // count back into it.
    unsafe { sys_bpf(BPF_PROG_QUERY, &mut attr) }?;
    Ok(attr.prog_cnt)
}

/// IDs of the programs attached to `target` at `attach_type` (so an owner can tell whether a
/// link it pinned is still attached there: cgroup queries report program ids, not link ids).
pub fn attached_prog_ids(target: BorrowedFd<'_>, attach_type: AttachType) -> io::Result<Vec<u32>> {
    let count = attached_count(target, attach_type)? as usize;
    let mut prog_ids = vec![0u32; count.max(1)];
    let mut attr = QueryAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_type: attach_type as u32,
        prog_ids: prog_ids.as_mut_ptr() as u64,
        prog_cnt: prog_ids.len() as u32,
        ..QueryAttr::default()
    };
    // SAFETY: the id buffers live across the call and `prog_cnt` says how long they are.
    unsafe { sys_bpf(BPF_PROG_QUERY, &mut attr) }?;
    prog_ids.truncate(attr.prog_cnt as usize);
    Ok(prog_ids)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info` for netns links.
#[repr(C)]
#[derive(Default)]
struct NetnsLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    netns_ino: u32,
    attach_type: u32,
    _rest: [u64; 6],
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// For a netns link, the inode of its namespace; 0 once the namespace is gone (which
    /// detaches the link).
    pub netns_ino: u32,
}

/// Reads a link's [`LinkInfo`].
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = NetnsLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: mem::size_of::<NetnsLinkInfo>() as u32,
        info: (&mut info as *mut NetnsLinkInfo) as u64,
    };
    // SAFETY: `info` lives across the call and `info_len` is its size.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        netns_ino: info.netns_ino,
    })
}

const BPF_OBJ_GET: libc::c_long = 7;

/// The `obj` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens a pinned BPF object (map, program or link) by its bpffs path.
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` points at a valid C string that lives across the call.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
