//! The data path: what happens to each connection a pod's listeners accept.
//!
//! - [`outbound`]: 15001, the pod's own connections, tunnelled over HBONE or passed through.
//! - [`inbound`]: 15008 (HBONE from other pods) and 15006 (plaintext from outside the mesh).
//! - [`record`]: per-connection metrics and access log.

mod copy;
pub mod inbound;
pub mod outbound;
pub mod record;

use tokio::io::{AsyncRead, AsyncWrite};

pub use copy::copy;

/// Runs the copy for an established connection and closes its record.
pub async fn relay<A, B>(mut record: record::ConnRecord, a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    record.established();
    match copy(a, b).await {
        Ok((sent, received)) => record.finish(sent, received, "ok"),
        Err(e) => record.finish(0, 0, &format!("ended with an error: {e}")),
    }
}
