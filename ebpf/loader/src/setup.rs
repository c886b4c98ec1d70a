//! Bringing the programs up: checking the environment, loading and pinning the programs,
//! and making sure each cgroup hook is attached exactly once to the configured cgroup.

use crate::{CaptureError, PinLayout, config::CaptureConfig, logs, object::OBJECT};
use amesh_sys::bpf::AttachType;
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SockOps,
        cgroup_sock_addr::CgroupSockAddrAttachType,
        links::{FdLink, PinnedLink},
    },
    sys::is_program_supported,
};
use std::{
    fs::File,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};
use tracing::{debug, warn};

pub(crate) const CONNECT4: &str = "amesh_connect4";
pub(crate) const CONNECT6: &str = "amesh_connect6";
pub(crate) const SOCKOPS: &str = "amesh_sockops";
pub(crate) const SK_LOOKUP: &str = "amesh_sk_lookup";
pub(crate) const SENDMSG4: &str = "amesh_sendmsg4";
pub(crate) const SENDMSG6: &str = "amesh_sendmsg6";
pub(crate) const RECVMSG4: &str = "amesh_recvmsg4";
pub(crate) const RECVMSG6: &str = "amesh_recvmsg6";
pub(crate) const PROGRAMS: [&str; 8] = [
    CONNECT4, CONNECT6, SOCKOPS, SK_LOOKUP, SENDMSG4, SENDMSG6, RECVMSG4, RECVMSG6,
];

/// The cgroup hooks: program name, sock_addr attach type (None = sock_ops), query type.
pub(crate) const CGROUP_HOOKS: [(&str, Option<CgroupSockAddrAttachType>, AttachType); 7] = [
    (
        CONNECT4,
        Some(CgroupSockAddrAttachType::Connect4),
        AttachType::CgroupInet4Connect,
    ),
    (
        CONNECT6,
        Some(CgroupSockAddrAttachType::Connect6),
        AttachType::CgroupInet6Connect,
    ),
    (SOCKOPS, None, AttachType::CgroupSockOps),
    (
        SENDMSG4,
        Some(CgroupSockAddrAttachType::UDPSendMsg4),
        AttachType::CgroupUdp4Sendmsg,
    ),
    (
        SENDMSG6,
        Some(CgroupSockAddrAttachType::UDPSendMsg6),
        AttachType::CgroupUdp6Sendmsg,
    ),
    (
        RECVMSG4,
        Some(CgroupSockAddrAttachType::UDPRecvMsg4),
        AttachType::CgroupUdp4Recvmsg,
    ),
    (
        RECVMSG6,
        Some(CgroupSockAddrAttachType::UDPRecvMsg6),
        AttachType::CgroupUdp6Recvmsg,
    ),
];

/// aya attaches through a bpf_link on this kernel; link-based cgroup attachments always
/// coexist with other programs on the cgroup (Cilium, Istio CNI, ...) and the kernel refuses
/// attach flags on them, so the mode must be the flagless one.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Checks the environment first, so operators get a precise message instead of a syscall
/// error.
pub(crate) fn preflight(config: &CaptureConfig) -> Result<(), CaptureError> {
    if !amesh_sys::fs::is_cgroup2(&config.cgroup) {
        return Err(CaptureError::CgroupNotFound {
            path: config.cgroup.clone(),
        });
    }
    let mut existing = config.pin_root.as_path();
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !amesh_sys::fs::is_bpffs(existing) {
        return Err(CaptureError::BpffsNotMounted {
            path: existing.to_path_buf(),
        });
    }
    for (program, ty) in [
        (
            "cgroup sock_addr",
            aya::programs::ProgramType::CgroupSockAddr,
        ),
        ("sock_ops", aya::programs::ProgramType::SockOps),
        ("sk_lookup", aya::programs::ProgramType::SkLookup),
    ] {
        match is_program_supported(ty) {
            Ok(true) => {}
            Ok(false) => return Err(CaptureError::ProgramUnsupported { program }),
            Err(e) => return Err(privileged_or(e, CaptureError::program(program))),
        }
    }
    Ok(())
}

/// Loads the object (reusing pinned maps) and pins any program not pinned yet. Returns the
/// loaded object and whether everything was already pinned (adoption).
pub(crate) fn load_programs(
    layout: &PinLayout,
    debug_logs: bool,
) -> Result<(Ebpf, bool), CaptureError> {
    for dir in [layout.maps(), layout.progs(), layout.links()] {
        std::fs::create_dir_all(&dir).map_err(CaptureError::io(dir))?;
    }
    let level = if debug_logs {
        logs::LEVEL_DEBUG
    } else {
        logs::LEVEL_OFF
    };
    let object = OBJECT.ok_or(CaptureError::NoObject)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(layout.maps())
        .override_global("AYA_LOG_LEVEL", &level, false)
        .load(object)
        .map_err(|e| privileged_or(e, |e| CaptureError::Load(Box::new(e))))?;
    let mut all_pinned = true;
    for name in PROGRAMS {
        let pin = layout.prog(name);
        if pin.exists() {
            continue;
        }
        all_pinned = false;
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| CaptureError::program(name)(ProgramError::NotLoaded))?;
        load_program(prog).map_err(|e| privileged_or(e, CaptureError::program(name)))?;
        prog.pin(&pin).map_err(|source| CaptureError::Pin {
            path: pin.clone(),
            source,
        })?;
    }
    Ok((ebpf, all_pinned))
}

fn load_program(prog: &mut Program) -> Result<(), ProgramError> {
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// Makes sure every cgroup hook has exactly one link of ours attached to `cgroup`. A pinned
/// link that is attached there is adopted; one attached elsewhere (the cgroup changed, or it
/// was removed) is dropped and replaced. Returns true when nothing had to be attached.
pub(crate) fn ensure_cgroup_links(layout: &PinLayout, cgroup: &Path) -> Result<bool, CaptureError> {
    let dir = File::open(cgroup).map_err(CaptureError::io(cgroup))?;
    let mut all_adopted = true;
    for (name, kind, query) in CGROUP_HOOKS {
        let link_pin = layout.link(name);
        if link_pin.exists() {
            if is_attached_to(&link_pin, dir.as_fd(), query)? {
                debug!(program = name, "adopted pinned cgroup link");
                continue;
            }
            warn!(program = name, cgroup = %cgroup.display(), "pinned link is not attached to this cgroup; replacing it");
            unpin_link(&link_pin)?;
        }
        all_adopted = false;
        let link = attach_cgroup(layout, name, kind, dir.as_fd())?;
        link.pin(&link_pin).map_err(|source| CaptureError::Pin {
            path: link_pin.clone(),
            source,
        })?;
    }
    Ok(all_adopted)
}

fn is_attached_to(
    link_pin: &Path,
    cgroup: BorrowedFd<'_>,
    query: AttachType,
) -> Result<bool, CaptureError> {
    let link = amesh_sys::bpf::obj_get(link_pin).map_err(CaptureError::io(link_pin))?;
    let info = amesh_sys::bpf::link_info(link.as_fd()).map_err(CaptureError::io(link_pin))?;
    let attached = amesh_sys::bpf::attached_prog_ids(cgroup, query)
        .map_err(CaptureError::io("cgroup query"))?;
    Ok(attached.contains(&info.prog_id))
}

fn attach_cgroup(
    layout: &PinLayout,
    name: &'static str,
    kind: Option<CgroupSockAddrAttachType>,
    cgroup: BorrowedFd<'_>,
) -> Result<FdLink, CaptureError> {
    let pin = layout.prog(name);
    let to_fd_link = |source| CaptureError::Link {
        path: pin.clone(),
        source,
    };
    match kind {
        Some(kind) => {
            let mut prog =
                CgroupSockAddr::from_pin(&pin, kind).map_err(CaptureError::program(name))?;
            let id = prog
                .attach(cgroup, LINK_MODE)
                .map_err(CaptureError::program(name))?;
            prog.take_link(id)
                .map_err(CaptureError::program(name))?
                .try_into()
                .map_err(to_fd_link)
        }
        None => {
            let mut prog = SockOps::from_pin(&pin).map_err(CaptureError::program(name))?;
            let id = prog
                .attach(cgroup, LINK_MODE)
                .map_err(CaptureError::program(name))?;
            prog.take_link(id)
                .map_err(CaptureError::program(name))?
                .try_into()
                .map_err(to_fd_link)
        }
    }
}

/// Removes a pinned link; dropping its last fd detaches it. Missing is fine.
pub(crate) fn unpin_link(path: &Path) -> Result<(), CaptureError> {
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(path).map_err(|source| CaptureError::Link {
        path: path.to_path_buf(),
        source,
    })?;
    drop(link.unpin().map_err(CaptureError::io(path))?);
    Ok(())
}

/// Removes a pin file. Missing is fine.
pub(crate) fn remove_pin(path: &Path) -> Result<(), CaptureError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CaptureError::io(path)(e)),
    }
}

/// `NotPrivileged` when the failure comes down to EPERM (missing CAP_BPF / CAP_SYS_ADMIN),
/// else the error `other` makes. Verifier rejections (EACCES) stay what they are.
fn privileged_or<E: std::error::Error + 'static>(
    e: E,
    other: impl FnOnce(E) -> CaptureError,
) -> CaptureError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc_eperm())
        {
            return CaptureError::NotPrivileged;
        }
        cause = c.source();
    }
    other(e)
}

const fn libc_eperm() -> i32 {
    1
}
