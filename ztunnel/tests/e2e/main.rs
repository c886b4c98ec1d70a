//! ztunnel end to end: real ztunnel processes, real eBPF capture, pods made of network
//! namespaces, a fake node agent speaking ZDS. Needs root (CI runs as root).
#![allow(clippy::unwrap_used, reason = "test code")]

mod dataplane;
mod observe;
mod policy;
mod policy_xds;
mod security;
mod support;
mod xds;
mod xds_kube;
mod xds_nack;
mod zds;
