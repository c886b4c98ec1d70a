//! amesh's control plane: Kubernetes objects from a local directory of YAML, translated into
//! Istio's workload API and authorization resources and served to ztunnels over delta ADS
//! on a mutual-TLS port. Not built yet: the Kubernetes watch source and the CA service.
#![forbid(unsafe_code)]

pub mod ads;
pub mod catalog;
pub mod serve;
pub mod source;
pub mod translate;
pub mod watch;

#[cfg(test)]
mod tests;
