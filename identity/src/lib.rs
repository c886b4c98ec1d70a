//! Workload identity for amesh.
//!
//! - [`Identity`]: a SPIFFE id, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! - [`ca`]: the seam to a certificate authority ([`CaClient`]) and an in-process CA
//!   ([`LocalCa`]) for tests and the mesh-in-a-box; Istio's CA protocol plugs in here later.
//! - [`WorkloadCert`]: a key generated locally (ECDSA P-256) and the chain the CA signed.
//! - [`CertManager`]: one certificate per identity in use, renewed at half life, kept when
//!   the CA fails, dropped when its last user goes.
//! - [`tls`]: rustls configurations for HBONE: TLS 1.3, AES-GCM, ALPN `h2`, post-quantum
//!   hybrid key exchange preferred, and verifiers that check the peer's SPIFFE identity.
#![forbid(unsafe_code)]

pub mod ca;
mod cert;
mod manager;
mod spiffe;
pub mod tls;

pub use ca::{CaClient, CaError, LocalCa};
pub use cert::{CertError, WorkloadCert, identity_of};
pub use manager::{CertInfo, CertManager, CertState};
pub use spiffe::{Identity, IdentityError};

/// The trust domain Istio and amesh use when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
