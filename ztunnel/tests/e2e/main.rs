//! ztunnel end to end: real ztunnel processes, real eBPF capture, pods made of network
//! namespaces, a fake node agent speaking ZDS. Needs root (CI runs as root).
#![allow(clippy::unwrap_used, reason = "test code")]

mod admin_limits;
mod control_plane_input;
mod dataplane;
mod dns;
mod input;
mod istio_cni;
mod istio_env;
mod observe;
mod overload;
mod policy;
mod policy_xds;
mod security;
mod support;
mod waypoint;
mod waypoint_authz;
mod waypoint_grpc;
mod waypoint_kube;
mod waypoint_routes;
mod waypoint_vs;
mod xds;
mod xds_kube;
mod xds_nack;
mod zds;
