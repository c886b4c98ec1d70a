//! What a proxy needs to talk to its control plane (ztunnel today, a waypoint later):
//!
//! - [`Client`]: the delta ADS client, generic over resource types. It owns the stream, the
//!   subscriptions (wildcard or named, more names on demand), ACK/NACK, the versions held
//!   (reported on reconnect), jittered backoff and readiness; a [`Handler`] per type URL
//!   decodes, validates and applies that type's resources.
//! - [`ca_client::IstioCaClient`]: Istio's CA protocol (`CreateCertificate`).
//! - [`control`]: the TLS connection to the control plane (SPIFFE or host-name verification,
//!   in the rustls config) and the headers istiod expects (bearer token, `clusterid`).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod ca_client;
pub mod client;
pub mod control;
pub mod handler;
pub mod subscriptions;

pub use backoff::Backoff;
pub use client::{
    Client, Config, Handle, MAX_MESSAGE_SIZE, Observer, Stopped, Termination, XdsError,
};
pub use handler::{Changes, Handler, Rejected};
pub use subscriptions::{Applied, Subscriptions, UnknownType};
