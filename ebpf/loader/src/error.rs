//! What can go wrong loading and driving the capture programs, worded for operators.

use amesh_sys::netns::NetnsError;
use std::{io, net::IpAddr, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this build has no eBPF object (it was built with AMESH_EBPF_OBJECT=none); run \
         `cargo xtask build-ebpf` and build again"
    )]
    NoObject,
    #[error(
        "not privileged enough to load eBPF programs: run as root (or with CAP_BPF, \
         CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    NotPrivileged,
    #[error(
        "cgroup v2 not found at {path}: pass the cgroup v2 mount point (see `grep cgroup2 \
         /proc/mounts`; often /sys/fs/cgroup or /sys/fs/cgroup/unified)"
    )]
    CgroupNotFound { path: PathBuf },
    #[error("{path} is not on a bpffs: mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    BpffsNotMounted { path: PathBuf },
    #[error(
        "this kernel does not support {program} programs: amesh needs Linux 5.15 or newer \
         with BPF, cgroup v2 and sk_lookup"
    )]
    ProgramUnsupported { program: &'static str },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("all {max} pod slots are in use; unenroll pods first")]
    NoPodSlot { max: u32 },
    #[error("address {addr} is already enrolled for another pod (pod id {pod_id})")]
    AddressInUse { addr: IpAddr, pod_id: u32 },
    #[error("a pod must be enrolled with its addresses (or with inbound capture bypassed)")]
    NoAddresses,
    #[error("pod id {pod_id} is not enrolled")]
    UnknownPod { pod_id: u32 },
    #[error("{count} excluded {direction} ports given; at most {max} are supported")]
    TooManyExcludedPorts {
        direction: &'static str,
        count: usize,
        max: usize,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("listener socket: {0}")]
    Listener(#[source] io::Error),
}

impl CaptureError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }

    pub(crate) fn program(
        program: &'static str,
    ) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        move |source| Self::Program { program, source }
    }
}
