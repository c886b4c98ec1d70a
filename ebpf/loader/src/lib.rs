//! User space for amesh's kernel capture programs.
//!
//! [`Capture`] is the owner (the node agent): it loads the programs, attaches the outbound
//! hooks to a cgroup, pins everything under bpffs so that a restarted owner adopts it, and
//! enrolls pods (a map update plus an `sk_lookup` link on the pod's netns). [`CaptureMaps`] is
//! what ztunnel opens from the pins: it registers its in-pod listeners and recovers the
//! original destination of each redirected connection.
//!
//! ```text
//! app connect(10.0.2.5:8080) --connect4--> 127.0.0.1:15001 (ztunnel, in the pod's netns)
//!                              sock_ops: ORIGINAL_DST[(pod, 127.0.0.1, sport)] = 10.0.2.5:8080
//! peer --> podIP:8080 --sk_lookup--> ztunnel's 15006 listener (local address stays podIP:8080)
//! peer --> podIP:15008 --sk_lookup--> ztunnel's HBONE listener
//! ```
//!
//! ztunnel must reach a pod's app from inside the pod over loopback or from the pod's own
//! address: inbound capture cannot see socket marks, so a connection arriving on eth0 from
//! any other source (e.g. a preserved client address) would be captured again.
#![forbid(unsafe_code)]

mod capture;
mod config;
mod error;
mod logs;
pub mod maps;
mod object;
mod pins;
mod setup;

pub use amesh_ebpf_common::{PodConfig, PodCounters};
pub use capture::{Capture, CgroupAttachments, EnrollRequest, EnrolledPod};
pub use config::CaptureConfig;
pub use error::CaptureError;
pub use maps::CaptureMaps;
pub use pins::{DEFAULT_PIN_ROOT, PinLayout};
