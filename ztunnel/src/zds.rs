//! ZDS, the node agent's channel to ztunnel (Istio's protocol): ztunnel connects to the
//! agent's Unix SOCK_SEQPACKET socket, says hello, then answers every request (add with the
//! pod's netns fd, keep, del, snapshot-sent) with an ACK or a NACK carrying the reason.
//! Malformed requests, missing or extra fds, or an fd that is not a netns are NACKed and
//! change nothing. ztunnel reconnects with backoff when the agent goes away.

use crate::inpod::{InPod, PodInfo};
use amesh_proto::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use amesh_sys::{netns::Netns, seqpacket};
use prost::Message;
use std::{
    collections::HashSet,
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

const FIRST_RETRY: Duration = Duration::from_millis(10);
const MAX_RETRY: Duration = Duration::from_secs(15);
/// Largest ZDS message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// Connects to the agent at `path` and serves it forever, reconnecting with backoff.
pub async fn run(path: PathBuf, pods: Arc<InPod>, snapshot_received: Arc<AtomicBool>) {
    let mut retry = FIRST_RETRY;
    loop {
        match seqpacket::connect(&path) {
            Ok(fd) => {
                retry = FIRST_RETRY;
                info!(socket = %path.display(), "connected to the node agent");
                if let Err(error) = session(fd, &pods, &snapshot_received).await {
                    warn!(%error, "node agent connection failed");
                } else {
                    info!("node agent closed the connection");
                }
            }
            Err(error) => {
                warn!(socket = %path.display(), %error, retry_in = ?retry, "node agent not reachable")
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

async fn send(sock: &AsyncFd<OwnedFd>, msg: &impl Message) -> io::Result<()> {
    let bytes = msg.encode_to_vec();
    sock.async_io(Interest::WRITABLE, |fd| {
        seqpacket::send(fd.as_fd(), &bytes, &[])
    })
    .await
    .map(drop)
}

/// One connection: hello, then request → answer until the agent hangs up.
async fn session(fd: OwnedFd, pods: &InPod, snapshot_received: &AtomicBool) -> io::Result<()> {
    // `AsyncFd::new` is deprecated because a generic `T` could change its fd while
    // registered; an `OwnedFd` we own cannot, which is what the replacement's contract asks.
    #[allow(deprecated, reason = "sound for an OwnedFd, see above")]
    let sock = AsyncFd::new(fd)?;
    send(
        &sock,
        &ZdsHello {
            version: Version::V1 as i32,
        },
    )
    .await?;
    let mut snapshot = Snapshot::default();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let packet = sock
            .async_io(Interest::READABLE, |fd| {
                seqpacket::recv(fd.as_fd(), &mut buf)
            })
            .await?;
        let Some(packet) = packet else { return Ok(()) };
        let error = match handle(
            pods,
            &buf[..packet.len],
            packet,
            &mut snapshot,
            snapshot_received,
        ) {
            Ok(()) => String::new(),
            Err(reason) => {
                warn!(%reason, "NACK to the node agent");
                reason.to_string()
            }
        };
        let answer = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack { error })),
        };
        send(&sock, &answer).await?;
    }
}

/// Why a request was NACKed; the message is the NACK's reason.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("message or its descriptors were truncated")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("empty request")]
    Empty,
    #[error("add needs exactly one network-namespace descriptor, got {0}")]
    AddNeedsOneFd(usize),
    #[error("unexpected {0} descriptor(s) on a message that takes none")]
    UnexpectedFds(usize),
    #[error("add without uid or workload_info")]
    IncompleteAdd,
    /// Istio's ztunnel stops on this; amesh's refuses the message and carries on.
    #[error("keep after the snapshot (a keep only marks a pod of the snapshot to retain)")]
    KeepAfterSnapshot,
    #[error(transparent)]
    NotNetns(#[from] amesh_sys::netns::NetnsError),
    #[error(transparent)]
    Pod(#[from] crate::inpod::InPodError),
}

/// One connection's snapshot: the pods it named so far, and whether it ended.
#[derive(Debug, Default)]
struct Snapshot {
    mentioned: HashSet<String>,
    done: bool,
}

fn handle(
    pods: &InPod,
    bytes: &[u8],
    packet: seqpacket::Received,
    snapshot: &mut Snapshot,
    snapshot_received: &AtomicBool,
) -> Result<(), ZdsError> {
    if packet.truncated || packet.fds_truncated {
        return Err(ZdsError::Truncated);
    }
    let req = WorkloadRequest::decode(bytes)?;
    let mut fds = packet.fds;
    let no_fds = |fds: &[OwnedFd]| {
        if fds.is_empty() {
            Ok(())
        } else {
            Err(ZdsError::UnexpectedFds(fds.len()))
        }
    };
    match req.payload.ok_or(ZdsError::Empty)? {
        Payload::Add(add) => {
            if fds.len() != 1 {
                return Err(ZdsError::AddNeedsOneFd(fds.len()));
            }
            let info = add
                .workload_info
                .filter(|_| !add.uid.is_empty())
                .ok_or(ZdsError::IncompleteAdd)?;
            let netns = Netns::from_fd(fds.remove(0), Path::new("zds").join(&add.uid))?;
            let uid = add.uid.clone();
            let info = PodInfo {
                uid: add.uid,
                name: info.name,
                namespace: info.namespace,
                service_account: info.service_account,
            };
            pods.add(info, netns)?;
            snapshot.mentioned.insert(uid);
            Ok(())
        }
        Payload::Keep(keep) => {
            no_fds(&fds)?;
            // A keep only means something within a snapshot (retain this pod); after it,
            // Istio's ztunnel treats one as a protocol error.
            if snapshot.done {
                return Err(ZdsError::KeepAfterSnapshot);
            }
            // As Istio: a keep for a pod ztunnel does not have is acknowledged (the agent has
            // no fd to give it); the pod simply stays unserved until an add.
            if !pods.has(&keep.uid) {
                warn!(uid = %keep.uid, "keep for a pod this ztunnel does not serve");
            }
            snapshot.mentioned.insert(keep.uid);
            Ok(())
        }
        Payload::Del(del) => {
            no_fds(&fds)?;
            pods.del(&del.uid);
            Ok(())
        }
        Payload::SnapshotSent(_) => {
            no_fds(&fds)?;
            pods.retain(&snapshot.mentioned);
            snapshot.done = true;
            snapshot_received.store(true, Ordering::Release);
            Ok(())
        }
    }
}
