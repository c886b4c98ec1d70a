//! HBONE: TCP tunnelled through HTTP/2 `CONNECT` inside mutual TLS (port 15008), as Istio's
//! ztunnel speaks it. Shared by ztunnel and the waypoint.
//!
//! - [`server::serve`] answers CONNECT streams on an accepted mTLS connection.
//! - [`Pool`] opens CONNECT streams, multiplexed over pooled mTLS connections.
//! - [`H2Stream`] is one tunnel as an `AsyncRead + AsyncWrite` byte stream.
//! - [`metadata`]: the `baggage` and `traceparent` headers Istio sends beside a CONNECT.
#![forbid(unsafe_code)]

mod client;
mod keepalive;
pub mod metadata;
pub mod server;
mod settings;
mod stream;

pub use client::{Pool, PoolConfig, PoolKey, PooledStream};
pub use stream::H2Stream;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the peer answered the CONNECT with {0}")]
    Status(http::StatusCode),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}
