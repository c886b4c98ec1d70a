//! amesh's control plane. So far: the local source (a directory of Kubernetes YAML) and the
//! translation of Kubernetes objects into Istio's workload API and authorization resources,
//! which the xDS server will push to ztunnels. The server, the CA and the Kubernetes watch
//! source come with the control-plane issue.
#![forbid(unsafe_code)]

pub mod source;
pub mod translate;

#[cfg(test)]
mod tests;
