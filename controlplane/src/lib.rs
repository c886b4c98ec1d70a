//! amesh's control plane: Kubernetes objects from the API server (kube-rs reflectors) or a
//! local directory of YAML, translated into Istio's workload API and authorization resources
//! and served to ztunnels over delta ADS and Istio's CA protocol on one TLS port.
#![forbid(unsafe_code)]

pub mod ads;
pub mod app_protocol;
pub mod auth;
pub mod ca;
pub mod ca_secret;
pub mod catalog;
#[doc(hidden)]
pub mod fixtures;
pub mod jwks;
pub mod kube_source;
pub mod require_waypoint;
pub mod root_configmap;
pub mod route_status;
pub mod routes;
pub mod serve;
pub mod service_entries;
pub mod serving_cert;
pub mod translate;
pub mod virtual_services;
pub mod watch;
pub mod waypoint_controller;
pub mod waypoint_policies;
pub mod waypoints;

#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod waypoint_tests;
