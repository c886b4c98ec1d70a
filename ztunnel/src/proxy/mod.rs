//! The data path: what happens to each connection a pod's listeners accept.
//!
//! - [`inputs`]: everything the data path reads, handed in explicitly.
//! - [`pod`]: one pod as the proxy serves it, and sockets in its network namespace.
//! - [`outbound`]: 15001, the pod's own connections, tunnelled over HBONE or passed through.
//! - [`inbound`]: 15008 (HBONE from other pods) and 15006 (plaintext from outside the mesh).
//! - [`record`]: per-connection metrics and access log.
//! - [`error`]: why a connection failed, with its response flag and status.

pub mod authz;
mod copy;
pub mod error;
pub mod inbound;
pub mod inputs;
pub mod outbound;
pub mod pod;
pub mod record;

pub use error::NOT_CONFIGURED;
pub use inputs::ProxyInputs;
pub use pod::{PodCtx, PodNet};

use tokio::io::{AsyncRead, AsyncWrite};

pub use copy::{Copied, copy};

/// Runs the copy for an established connection and closes its record. When `kill` is
/// raised (a policy change denied the connection) the copy stops and both sides close.
pub async fn relay<A, B>(
    mut record: record::ConnRecord,
    a: &mut A,
    b: &mut B,
    kill: Option<crate::signal::Stop>,
) where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    record.established();
    let killed = async move {
        match kill {
            Some(k) => k.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = copy(a, b) => match copied.error {
            None => record.finish(copied.up, copied.down, "ok"),
            Some(e) => record.finish(copied.up, copied.down, &format!("ended with an error: {e}")),
        },
        () = killed => {
            record.labels.response_flags = crate::metrics::ResponseFlag::Deny;
            record.finish(0, 0, "closed: a policy change denies it");
        }
    }
}
