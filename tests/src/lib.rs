//! amesh's test bed: "pods" and "nodes" built out of real network namespaces joined by veth
//! pairs to a bridge inside an "underlay" namespace, with IPv4 and IPv6 addresses, a cgroup
//! for pod processes, a bpffs pin root, and packet capture on the underlay.
//!
//! Every object carries a per-run prefix (`amesh-<pid>-<n>`), so parallel runs do not collide,
//! and is removed when the [`TestBed`] is dropped, when the test panics, and when the process
//! gets Ctrl-C or SIGTERM. Objects left by a run that was killed outright (its pid gone) are
//! swept when the next bed is created.
//!
//! ```no_run
//! let bed = amesh_testbed::TestBed::new().unwrap();
//! let a = bed.add_pod("a").unwrap();
//! let b = bed.add_pod("b").unwrap();
//! let out = a.command("ping").args(["-c1", &b.ipv4().to_string()]).output().unwrap();
//! assert!(out.status.success());
//! ```
#![forbid(unsafe_code)]

mod bed;
mod cgroup;
pub mod cni;
pub mod daemon;
pub mod grpc;
pub mod ip;
pub mod istio_cni;
pub mod jwt;
pub mod kube_api;
pub mod mesh;
pub mod mesh_agents;
mod names;
mod pod;
pub mod probe;
mod process;
pub mod sniff;
pub mod standin;
pub mod tls_front;
mod wait;
pub mod waypoint;
pub mod zds_agent;

pub use bed::{Leftovers, TestBed, remove_on_terminate};
pub use pod::Pod;
pub use process::PodProcess;
pub use wait::eventually;

use std::fmt;

/// Errors from building or tearing down a test bed.
#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] amesh_sys::netns::NetnsError),
    #[error("no cgroup v2 mount found in /proc/mounts")]
    NoCgroup2,
    #[error("pod name {0:?} is too long or has characters other than [a-z0-9-]")]
    BadName(String),
    #[error("{what}: not within {timeout:?}; last: {last}")]
    Timeout {
        what: String,
        timeout: std::time::Duration,
        last: String,
    },
}

impl BedError {
    pub(crate) fn io(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }
}

/// Fails (never skips) a test that needs root, saying why.
pub fn require_root() {
    assert_eq!(
        amesh_sys::fs::euid(),
        0,
        "this test builds network namespaces and loads eBPF programs, so it must run as root \
         (CI runs as root; locally use `sudo -E cargo xtask test`)"
    );
}
