//! The node agent's side of ZDS (Istio's protocol between the CNI node agent and ztunnel):
//! the agent listens on a SOCK_SEQPACKET socket, ztunnel connects and says hello, the agent
//! sends an `add` (with the pod's netns fd) for every pod it enrolled, then `snapshot_sent`,
//! and afterwards one `add`/`del` at a time, each answered by an ACK or NACK.
//!
//! The registry of pods outlives connections: a (re)connecting ztunnel gets the whole set. A
//! peer that does not speak ZDS is closed and changes nothing for the ztunnel already served.

use amesh_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use amesh_sys::seqpacket;
use prost::Message;
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, info, warn};

/// How long ztunnel has to say hello and to answer each request (Istio's deadline).
const DEADLINE: Duration = Duration::from_secs(5);
/// How often an idle connection is checked for ztunnel having gone.
const LIVENESS: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ztunnel is not connected to the node agent")]
    NotConnected,
    #[error("ztunnel refused the pod: {0}")]
    Nack(String),
    #[error("talking to ztunnel: {0}")]
    Io(#[from] io::Error),
    #[error("ztunnel's answer is not a ZDS response: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("listening on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
}

/// A pod ztunnel acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub uid: String,
    pub info: WorkloadInfo,
}

/// A pod as ztunnel is told about it.
#[derive(Debug, Clone)]
pub struct ZdsPod {
    pub info: WorkloadInfo,
    /// Its network namespace; `None` after an agent restart that could not find it again
    /// (the pod is then sent as `keep`).
    pub netns: Option<Arc<OwnedFd>>,
}

#[derive(Debug)]
struct Inner {
    /// Counts connections, so that a liveness watch knows when its one was replaced.
    generation: AtomicU64,
    /// Bound but not yet accepting (see [`ZdsServer::start`]).
    listener: Mutex<Option<AsyncFd<OwnedFd>>>,
    pods: Mutex<BTreeMap<String, ZdsPod>>,
    /// The ztunnel being served; requests take turns through this lock.
    conn: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    /// Pods ztunnel acknowledged in a snapshot (the agent marks those pods enrolled).
    acked: mpsc::UnboundedSender<Acked>,
    path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ZdsServer {
    inner: Arc<Inner>,
}

impl ZdsServer {
    /// Binds `path` (replacing a stale socket file); ztunnels are served after
    /// [`ZdsServer::start`].
    pub fn listen(path: &Path, acked: mpsc::UnboundedSender<Acked>) -> Result<Self, ZdsError> {
        let listen_err = |source| ZdsError::Listen {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(listen_err)?;
        }
        let _ = std::fs::remove_file(path);
        let listener =
            watch_fd(seqpacket::listen(path).map_err(listen_err)?).map_err(listen_err)?;
        let server = Self {
            inner: Arc::new(Inner {
                generation: AtomicU64::new(0),
                listener: Mutex::default(),
                pods: Mutex::default(),
                conn: tokio::sync::Mutex::new(None),
                acked,
                path: path.to_path_buf(),
            }),
        };
        *server
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
        Ok(server)
    }

    /// Starts accepting ztunnels. Called once the registry holds every pod the agent already
    /// serves: a ztunnel that connected earlier would get a snapshot without them and stop
    /// serving them.
    pub fn start(&self) {
        let listener = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(listener) = listener {
            let s = self.clone();
            tokio::spawn(async move { s.accept_loop(listener).await });
            info!(socket = %self.inner.path.display(), "serving ZDS");
        }
    }

    async fn accept_loop(&self, listener: AsyncFd<OwnedFd>) {
        loop {
            let accepted = match listener.readable().await {
                Ok(mut guard) => match guard.try_io(|l| seqpacket::accept(l.get_ref().as_fd())) {
                    Ok(r) => r,
                    Err(_would_block) => continue,
                },
                Err(e) => Err(e),
            };
            match accepted {
                Ok(conn) => {
                    let s = self.clone();
                    tokio::spawn(async move { s.serve(conn).await });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a ZDS connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Checks the hello, then makes this the ztunnel served and sends it the snapshot.
    async fn serve(&self, conn: OwnedFd) {
        let conn = match watch_fd(conn) {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "registering a ZDS connection"),
        };
        let hello = match recv(&conn).await {
            Ok(bytes) => ZdsHello::decode(&bytes[..]).map_err(ZdsError::from),
            Err(e) => Err(e),
        };
        match hello {
            Ok(h) if h.version == Version::V1 as i32 => {}
            Ok(h) => return warn!(version = h.version, "refusing a ZDS peer: unknown version"),
            Err(e) => return warn!(error = %e, "refusing a ZDS peer that did not say hello"),
        }
        let mut current = self.inner.conn.lock().await;
        if current.is_some() {
            info!("a new ztunnel connected; it replaces the previous one");
        }
        *current = Some(conn);
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pods: Vec<(String, ZdsPod)> = self.pods().clone().into_iter().collect();
        let mut acked = Vec::new();
        let mut failed = None;
        for (uid, pod) in &pods {
            let (payload, fd) = match &pod.netns {
                Some(fd) => (add_payload(uid, pod), Some(fd.clone())),
                None => (Payload::Keep(KeepWorkload { uid: uid.clone() }), None),
            };
            let conn = current.as_ref().expect("set above");
            match request(conn, payload, fd.as_ref().map(|f| f.as_fd())).await {
                Ok(()) => acked.push(Acked {
                    uid: uid.clone(),
                    info: pod.info.clone(),
                }),
                Err(ZdsError::Nack(reason)) => {
                    warn!(%uid, %reason, "ztunnel refused a pod of the snapshot")
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            let conn = current.as_ref().expect("set above");
            failed = request(conn, Payload::SnapshotSent(SnapshotSent {}), None)
                .await
                .err();
        }
        match failed {
            Some(e) => {
                warn!(error = %e, "sending the snapshot failed; waiting for ztunnel to reconnect");
                *current = None;
            }
            None => {
                info!(pods = pods.len(), "ztunnel connected; snapshot sent");
                let s = self.clone();
                tokio::spawn(async move { s.watch_liveness(generation).await });
                for a in acked {
                    let _ = self.inner.acked.send(a);
                }
            }
        }
    }

    /// Notices a ztunnel that went away between requests (it sends nothing unasked, so a
    /// readable socket means it hung up), so that the agent knows it is not served.
    async fn watch_liveness(&self, generation: u64) {
        loop {
            tokio::time::sleep(LIVENESS).await;
            let mut current = self.inner.conn.lock().await;
            if self.inner.generation.load(Ordering::Relaxed) != generation {
                return; // replaced by a newer connection, which has its own watch
            }
            let Some(conn) = current.as_ref() else {
                return;
            };
            // Polled once: ready now or not at all.
            let Ok(Ok(mut guard)) = tokio::time::timeout(Duration::ZERO, conn.readable()).await
            else {
                continue;
            };
            let mut buf = [0u8; 64];
            match guard.try_io(|c| seqpacket::recv(c.get_ref().as_fd(), &mut buf)) {
                Err(_would_block) => continue,
                Ok(Ok(Some(_))) => warn!("ztunnel sent a packet nobody asked for; closing"),
                Ok(Ok(None)) | Ok(Err(_)) => warn!("ztunnel disconnected"),
            }
            *current = None;
            return;
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ZdsPod>> {
        self.inner.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a pod and tells the connected ztunnel. The pod stays registered (and goes
    /// out with the next snapshot) unless [`ZdsServer::forget`] removes it.
    pub async fn add(&self, uid: &str, pod: ZdsPod) -> Result<(), ZdsError> {
        self.pods().insert(uid.to_string(), pod.clone());
        let Some(fd) = pod.netns.clone() else {
            // Without its namespace there is nothing to add, and a keep outside a snapshot
            // is a protocol error to ztunnel (Istio's stops on it): it goes out as a keep
            // with the next snapshot.
            debug!(%uid, "pod registered without its network namespace; sent with the next snapshot");
            return Ok(());
        };
        let payload = add_payload(uid, &pod);
        let fd = Some(fd);
        // The caller learns of the ACK from the result; only snapshot ACKs (nobody waits on
        // them) go to the acked channel.
        self.send(payload, fd.as_ref().map(|f| f.as_fd())).await
    }

    /// Unregisters a pod and tells the connected ztunnel to stop serving it.
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        self.pods().remove(uid);
        self.send(Payload::Del(DelWorkload { uid: uid.into() }), None)
            .await
    }

    /// Registers a pod without telling ztunnel (before it connects: the snapshot carries it).
    pub fn register(&self, uid: &str, pod: ZdsPod) {
        self.pods().insert(uid.to_string(), pod);
    }

    /// Unregisters a pod without telling ztunnel (after ztunnel refused it).
    pub fn forget(&self, uid: &str) {
        self.pods().remove(uid);
    }

    pub fn registered(&self) -> Vec<String> {
        self.pods().keys().cloned().collect()
    }

    pub async fn connected(&self) -> bool {
        self.inner.conn.lock().await.is_some()
    }

    async fn send(&self, payload: Payload, fd: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let mut current = self.inner.conn.lock().await;
        let conn = current.as_ref().ok_or(ZdsError::NotConnected)?;
        match request(conn, payload, fd).await {
            Err(e @ (ZdsError::Io(_) | ZdsError::Decode(_))) => {
                warn!(error = %e, "lost ztunnel");
                *current = None;
                Err(e)
            }
            other => other,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Registers a socket with the runtime.
fn watch_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // `AsyncFd::new` is deprecated because a generic `T` could change its fd while
    // registered; an `OwnedFd` cannot, which is what the replacement's contract asks.
    #[allow(deprecated, reason = "sound for an OwnedFd, see above")]
    AsyncFd::new(fd)
}

fn add_payload(uid: &str, pod: &ZdsPod) -> Payload {
    Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(pod.info.clone()),
    })
}

/// One request and its answer, within the deadline.
async fn request(
    conn: &AsyncFd<OwnedFd>,
    payload: Payload,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), ZdsError> {
    let bytes = WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let mut guard = conn.writable().await?;
            match guard.try_io(|c| seqpacket::send(c.get_ref().as_fd(), &bytes, &fds)) {
                Ok(r) => break r.map(drop),
                Err(_would_block) => continue,
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "sending to ztunnel"))??;
    let answer = recv(conn).await?;
    let response = WorkloadResponse::decode(&answer[..])?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(()),
        Some(workload_response::Payload::Ack(ack)) => Err(ZdsError::Nack(ack.error)),
        None => Err(ZdsError::Io(io::Error::other("empty ZDS response"))),
    }
}

/// One packet, within the deadline; EOF is an error (ztunnel went away).
async fn recv(conn: &AsyncFd<OwnedFd>) -> Result<Vec<u8>, ZdsError> {
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            let mut guard = conn.readable().await?;
            match guard.try_io(|c| seqpacket::recv(c.get_ref().as_fd(), &mut buf)) {
                Ok(r) => break r,
                Err(_would_block) => continue,
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "waiting for ztunnel"))??;
    let got = got.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "ztunnel hung up"))?;
    if got.truncated || !got.fds.is_empty() {
        return Err(ZdsError::Io(io::Error::other(
            "ztunnel sent an oversized packet or descriptors",
        )));
    }
    buf.truncate(got.len);
    Ok(buf)
}
