//! What the CNI plugin and the node agent say to each other: one JSON request line and one
//! JSON reply line per connection on the agent's Unix socket.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Add,
    Del,
    Check,
}

/// One pod, as the runtime describes it to the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRequest {
    pub command: Command,
    pub container_id: String,
    /// The pod's network namespace (`CNI_NETNS`); empty on a DEL after the namespace went.
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// The pod's addresses from `prevResult`.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// Captured, and ztunnel acknowledged the pod.
    Enrolled,
    /// The pod stays out of the mesh (and why).
    NotInMesh { reason: String },
    /// DEL done (also when there was nothing to do).
    Released,
    /// The pod must be in the mesh but could not be enrolled (or CHECK found it is not).
    Failed { message: String },
}
