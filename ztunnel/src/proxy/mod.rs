//! The data path: what happens to each connection a pod's listeners accept.
//!
//! - [`outbound`]: 15001, the pod's own connections, tunnelled over HBONE or passed through.
//! - [`inbound`]: 15008 (HBONE from other pods) and 15006 (plaintext from outside the mesh).

pub mod inbound;
pub mod outbound;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

/// Copy buffer per direction. Sized for throughput on loopback and LANs while keeping a
/// thousand idle connections cheap.
const COPY_BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides are done; half-close travels across. Returns bytes
/// (a → b, b → a).
pub async fn copy<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await
}

/// One connection's access-log record, emitted once when it ends.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub dst_workload: Option<&'a str>,
    pub started: Instant,
}

impl AccessLog<'_> {
    pub fn finish(&self, sent: u64, received: u64, outcome: &str) {
        let duration: Duration = self.started.elapsed();
        info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            dst.addr = %self.dst,
            src.identity = self.src_identity.as_deref().unwrap_or("-"),
            dst.identity = self.dst_identity.as_deref().unwrap_or("-"),
            dst.workload = self.dst_workload.unwrap_or("-"),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = duration.as_millis() as u64,
            outcome,
            "connection complete"
        );
    }
}
