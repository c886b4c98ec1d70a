//! L4 security policy for amesh, with Istio's semantics.
//!
//! - [`model`]: authorization policies in the shape ztunnel receives them.
//! - [`eval`]: deciding a connection (DENY first, then ALLOW, dry-run reported apart), or a
//!   request at a waypoint with [`l7`]'s HTTP attributes.
//! - [`crd`]: Istio's AuthorizationPolicy / PeerAuthentication resources translated for L4.
//! - [`peer_auth`]: whether a workload accepts plaintext (PeerAuthentication modes), and that
//!   requirement as the DENY policy ztunnel enforces.
//! - [`wire`]: policies in the wire form ztunnel receives, both ways.
#![forbid(unsafe_code)]

pub mod crd;
pub mod eval;
pub mod ext_authz;
pub mod jwt;
pub mod l7;
pub mod model;
pub mod peer_auth;
pub mod traffic;
pub mod wire;

pub use eval::{Connection, Decision, Outcome, evaluate, evaluate_request};
pub use l7::{HttpMatch, Request, RequestAuth};
pub use model::{
    Action, Authorization, Clause, IpNet, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
pub use peer_auth::{
    MtlsMode, PeerAuthentication, PeerScope, chain, effective_mode, mode_in, strict_policy,
};

#[cfg(test)]
mod l7_tests;
#[cfg(test)]
mod tests;
