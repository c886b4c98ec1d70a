//! What the owner says about where and how to run the capture programs. Its own module
//! because both `setup` (preflight checks, loading) and `capture` (which
//! drives setup) read it: kept in either, the two modules would import each other.

use std::path::PathBuf;

/// Where and how to run the capture programs.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Pin directory on bpffs for this instance (e.g. `/sys/fs/bpf/amesh`).
    pub pin_root: PathBuf,
    /// cgroup v2 directory the outbound programs attach to; every pod's processes must live
    /// below it (on a node: the cgroup v2 root).
    pub cgroup: PathBuf,
    /// Forward the programs' debug logs to `tracing` (off by default: it costs on hot paths).
    pub debug_logs: bool,
}
