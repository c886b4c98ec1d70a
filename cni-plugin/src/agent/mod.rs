//! The node agent (`amesh-node`): owns the capture programs, keeps the CNI plugin in the
//! node's chain, answers the plugin, serves ztunnel over ZDS, and keeps the set of enrolled
//! pods in line with the cluster.

pub mod cluster;
pub mod core;
pub mod install;
pub mod mark;
pub mod netns_scan;
pub mod readiness;
pub mod state;
pub mod zds;

use crate::{
    agent::{
        cluster::{ClusterView, Source},
        core::{Core, CoreConfig},
        install::{CniInstall, Ensured},
        mark::Marker,
        zds::ZdsServer,
    },
    wire::{PodRequest, Reply},
};
use amesh_ebpf_loader::{Capture, CaptureConfig};
use amesh_kube::dir_source::fingerprint;
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

/// How often the CNI conf dir is checked for rewrites.
const CONF_POLL: Duration = Duration::from_millis(250);
/// How often everything is reconciled even when the cluster is quiet (pods ztunnel refused
/// or missed are offered again).
const RESYNC: Duration = Duration::from_secs(30);
/// How long a CNI request may take to arrive once connected.
const REQUEST_READ: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub source: Source,
    pub capture: CaptureConfig,
    pub cni: CniInstall,
    pub cni_socket: PathBuf,
    pub zds_socket: PathBuf,
    pub state_dir: PathBuf,
    /// What must survive a reboot of the node (the plugin's fallback file).
    pub persistent_dir: PathBuf,
    pub excluded_namespaces: Vec<String>,
    pub readiness: Option<SocketAddr>,
    pub proc_root: PathBuf,
    /// Pods' DNS to ztunnel's proxy unless their annotation says otherwise.
    pub dns_capture: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Capture(#[from] amesh_ebpf_loader::CaptureError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Zds(#[from] zds::ZdsError),
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error(transparent)]
    Readiness(#[from] readiness::ReadinessError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Runs the agent until `shutdown` resolves. Leaves the programs pinned and the plugin in
/// the chain on the way out, so pods keep their capture and new ambient pods fail closed
/// while the agent restarts.
pub async fn run(
    config: AgentConfig,
    marker: Marker,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    for dir in [&config.state_dir, &config.persistent_dir] {
        std::fs::create_dir_all(dir)
            .map_err(io(format!("creating the state dir {}", dir.display())))?;
    }
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.readiness {
        readiness::serve(addr, ready.clone()).await?;
    }
    let capture = Capture::load_or_adopt(&config.capture)?;
    info!(adopted = capture.adopted(), "capture programs owned");
    let view = cluster::start(config.source.clone(), config.node.clone()).await?;
    info!(
        namespaces = view.borrow().namespaces.len(),
        pods = view.borrow().pods.len(),
        "cluster view synced"
    );
    let (acked_tx, acked_rx) = mpsc::unbounded_channel();
    let zds = ZdsServer::listen(&config.zds_socket, acked_tx)?;
    let core = Core::new(
        CoreConfig {
            excluded_namespaces: config.excluded_namespaces.clone(),
            state_file: config.state_dir.join("state.json"),
            enrollment_file: config.persistent_dir.join("enrollment.json"),
            proc_root: config.proc_root.clone(),
            pod_cgroup: relative_cgroup(&config.capture.cgroup),
            pod_wait: Duration::from_secs(5),
            dns_capture: config.dns_capture,
        },
        capture,
        zds.clone(),
        view.clone(),
        marker,
    );
    core.reconcile().await;
    core.release_unknown_captures().await;
    zds.start();
    tokio::spawn(mark_acked(core.clone(), acked_rx));
    tokio::spawn(follow_cluster(core.clone(), view));
    config.cni.install_binary()?;
    install_chain(&config.cni)?;
    tokio::spawn(keep_chained(config.cni.clone()));
    let listener = bind_cni_socket(&config.cni_socket)?;
    tokio::spawn(serve_cni(listener, core.clone()));
    ready.store(true, Ordering::Relaxed);
    info!(node = %config.node, cni_socket = %config.cni_socket.display(), "node agent ready");
    shutdown.await;
    info!("node agent stopping; capture and the CNI entry stay in place");
    let _ = std::fs::remove_file(&config.cni_socket);
    Ok(())
}

/// The capture cgroup as processes' `/proc/<pid>/cgroup` names it: relative to the cgroup v2
/// mount (`/` when it is the mount itself, or mounted elsewhere, as in the DaemonSet).
fn relative_cgroup(cgroup: &std::path::Path) -> String {
    amesh_sys::fs::cgroup2_mount()
        .and_then(|root| cgroup.strip_prefix(root).ok().map(|p| p.to_path_buf()))
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|| "/".into())
}

fn install_chain(cni: &CniInstall) -> Result<(), AgentError> {
    match cni.ensure()? {
        Ensured::Inserted(p) => {
            info!(conflist = %p.display(), "chained into the CNI configuration")
        }
        Ensured::Unchanged(p) => info!(conflist = %p.display(), "already chained"),
        Ensured::NoPrimary => {
            warn!(dir = %cni.conf_dir.display(), "no CNI configuration yet; waiting for the cluster's CNI to write one")
        }
    }
    Ok(())
}

/// Puts the plugin back whenever someone rewrites the CNI configuration.
async fn keep_chained(cni: CniInstall) {
    let mut last = fingerprint(&cni.conf_dir);
    loop {
        tokio::time::sleep(CONF_POLL).await;
        let now = fingerprint(&cni.conf_dir);
        if now == last {
            continue;
        }
        // Off the runtime: the directory is the node's, and anything can sit in it.
        let ensure = cni.clone();
        match tokio::task::spawn_blocking(move || ensure.ensure()).await {
            Ok(Ok(Ensured::Inserted(p))) => {
                warn!(conflist = %p.display(), "the CNI configuration was rewritten without amesh; chained again")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "repairing the CNI configuration"),
            Err(e) => warn!(error = %e, "repairing the CNI configuration: the task failed"),
        }
        last = fingerprint(&cni.conf_dir);
    }
}

async fn follow_cluster(core: Core, mut view: watch::Receiver<ClusterView>) {
    loop {
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
        core.reconcile().await;
    }
}

async fn mark_acked(core: Core, mut acked: mpsc::UnboundedReceiver<zds::Acked>) {
    while let Some(a) = acked.recv().await {
        let key = state::key(&a.info.namespace, &a.info.name);
        core.acknowledged(&key, &a.uid).await;
    }
}

fn bind_cni_socket(path: &std::path::Path) -> Result<UnixListener, AgentError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(io(format!("listening on {}", path.display())))
}

async fn serve_cni(listener: UnixListener, core: Core) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let core = core.clone();
                tokio::spawn(async move { answer(stream, core).await });
            }
            Err(e) => {
                warn!(error = %e, "accepting a CNI connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, one reply; anything malformed gets a `Failed` reply naming the problem and
/// only this connection is closed.
async fn answer(stream: UnixStream, core: Core) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    let reply = match tokio::time::timeout(REQUEST_READ, reader.read_line(&mut line)).await {
        Err(_) => Reply::Failed {
            message: "no request within the deadline".into(),
        },
        Ok(Err(e)) => Reply::Failed {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) => match serde_json::from_str::<PodRequest>(&line) {
            Ok(req) => {
                info!(command = ?req.command, pod = %format!("{}/{}", req.pod_namespace, req.pod_name), netns = %req.netns, "CNI request");
                core.handle(req).await
            }
            Err(e) => Reply::Failed {
                message: format!("malformed request: {e}"),
            },
        },
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}
