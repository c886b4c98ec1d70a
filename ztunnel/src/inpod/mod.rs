//! Pods ztunnel proxies for: for each, listeners inside the pod's netns (15001 outbound,
//! 15006 inbound plaintext, 15008 inbound HBONE), registered with the eBPF capture, and the
//! pod's certificate kept ready. Removing a pod closes its listeners and every connection.

use crate::{
    drain::DrainWatch,
    metrics::{Listener, OpenSocket, Reporter},
    proxy::{self, PodCtx, PodNet, ProxyInputs},
    signal::{Raise, Stop},
};
use amesh_ebpf_loader::CaptureMaps;
use amesh_identity::Identity;
use amesh_serve::Acceptor;
use amesh_sys::netns::Netns;
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{Arc, Mutex},
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

/// Why a pod cannot be served (sent back to the node agent as the NACK reason).
#[derive(Debug, thiserror::Error)]
pub enum InPodError {
    #[error(transparent)]
    Netns(#[from] amesh_sys::netns::NetnsError),
    #[error("the pod's network namespace is not enrolled in the capture programs")]
    NotEnrolled,
    #[error("listening on {addr} in the pod: {source}")]
    Listen {
        addr: &'static str,
        source: std::io::Error,
    },
    #[error("capture maps: {0}")]
    Capture(#[from] amesh_ebpf_loader::CaptureError),
}

#[derive(Debug)]
struct Running {
    stop: Raise,
    name: String,
    identity: Identity,
    netns_cookie: u64,
}

/// A pod's listeners, opened inside its network namespace.
struct Listeners {
    outbound4: TcpListener,
    /// Pods without IPv6 have no `[::1]`.
    outbound6: Option<TcpListener>,
    hbone: TcpListener,
    plaintext: TcpListener,
    /// The DNS proxy's (15053); a pod whose DNS sockets cannot open is still served, its
    /// captured DNS then goes unanswered (never around the mesh).
    dns: Option<crate::dns::server::Listeners>,
}

impl Listeners {
    fn open(net: &PodNet) -> Result<Self, InPodError> {
        let listen = |addr: &'static str| -> Result<TcpListener, InPodError> {
            let parsed: SocketAddr = addr.parse().map_err(|_| InPodError::Listen {
                addr,
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
            net.listen(parsed)
                .map_err(|source| InPodError::Listen { addr, source })
        };
        Ok(Self {
            outbound4: listen("127.0.0.1:15001")?,
            outbound6: listen("[::1]:15001").ok(),
            hbone: listen("[::]:15008")?,
            plaintext: listen("[::]:15006")?,
            dns: crate::dns::server::Listeners::open(net)
                .inspect_err(|e| warn!(error = %e, "the pod's DNS proxy cannot listen; its DNS goes unanswered"))
                .ok(),
        })
    }

    /// Starts an accept loop per listener, each ending when the pod stops or ztunnel drains.
    fn serve(self, pod: &Arc<PodCtx>, inputs: &Arc<ProxyInputs>, stop: &Stop) {
        let spawn = |listener: TcpListener, kind: PodListener| {
            let (pod, inputs, stop) = (pod.clone(), inputs.clone(), stop.clone());
            let sockets = inputs.metrics.listeners.sockets(kind.reporter());
            tokio::spawn(accept_loop(
                listener,
                crate::accept::counted(kind.metric(), &inputs.metrics.listeners),
                stop,
                inputs.drain.clone(),
                move |conn, peer| {
                    let (pod, inputs) = (pod.clone(), inputs.clone());
                    let open = OpenSocket::new(&sockets);
                    async move {
                        let _open = open;
                        match kind {
                            PodListener::Outbound => {
                                proxy::outbound::handle(inputs, pod, conn, peer).await
                            }
                            PodListener::Hbone => {
                                proxy::inbound::handle_hbone(inputs, pod, conn, peer).await
                            }
                            PodListener::Plaintext => {
                                proxy::inbound::handle_plaintext(inputs, pod, conn, peer).await
                            }
                        }
                    }
                },
            ));
        };
        spawn(self.outbound4, PodListener::Outbound);
        if let Some(l) = self.outbound6 {
            spawn(l, PodListener::Outbound);
        }
        spawn(self.hbone, PodListener::Hbone);
        spawn(self.plaintext, PodListener::Plaintext);
        if let Some(dns) = self.dns {
            dns.serve(pod, inputs, stop);
        }
    }
}

/// The pods this ztunnel serves.
#[derive(Debug)]
pub struct InPod {
    inputs: Arc<ProxyInputs>,
    /// The capture maps' handle for enrolment: pod ids and listener registrations. `None`
    /// under istio-cni, whose iptables rules need nothing from ztunnel.
    maps: Option<Mutex<CaptureMaps>>,
    /// Pod ids under istio-cni (ztunnel's own numbering; the eBPF capture assigns them
    /// otherwise).
    next_pod_id: std::sync::atomic::AtomicU32,
    pods: Mutex<HashMap<String, Running>>,
}

/// What the node agent says about a pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl InPod {
    /// Serving pods the eBPF capture enrolled (`Some(maps)`), or pods istio-cni set up.
    pub fn new(inputs: Arc<ProxyInputs>, maps: Option<CaptureMaps>) -> Self {
        Self {
            inputs,
            maps: maps.map(Mutex::new),
            next_pod_id: std::sync::atomic::AtomicU32::new(1),
            pods: Mutex::default(),
        }
    }

    fn maps(&self) -> Option<std::sync::MutexGuard<'_, CaptureMaps>> {
        self.maps
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts serving a pod. The same pod sent again (same network namespace) is left as it
    /// is; a new namespace for a known uid replaces the old one. Errors are the reason sent
    /// back as a NACK.
    pub fn add(&self, info: PodInfo, netns: Netns) -> Result<(), InPodError> {
        let cookie = netns.cookie()?;
        if self
            .pods()
            .get(&info.uid)
            .is_some_and(|r| r.netns_cookie == cookie)
        {
            return Ok(());
        }
        let pod_id = self.enrolled_pod_id(cookie)?;
        let sa = if info.service_account.is_empty() {
            "default"
        } else {
            &info.service_account
        };
        let identity = Identity::new(&self.inputs.id.trust_domain, &info.namespace, sa);
        let net = PodNet::new(netns, self.inputs.home.clone());
        let listeners = Listeners::open(&net)?;
        if let Some(mut maps) = self.maps() {
            maps.register_listeners(pod_id, listeners.hbone.as_fd(), listeners.plaintext.as_fd())?;
        }
        // Take the identity before releasing the old one so a replacement keeps its certificate.
        self.inputs.trust.certs.acquire(&identity);
        self.del(&info.uid);
        let (raise, stop) = Stop::new();
        let pod = Arc::new(PodCtx {
            uid: info.uid.clone(),
            name: info.name.clone(),
            namespace: info.namespace.clone(),
            identity: identity.clone(),
            pod_id,
            net,
            server_tls: Mutex::new(None),
        });
        listeners.serve(&pod, &self.inputs, &stop);
        info!(uid = %info.uid, pod = %info.name, namespace = %info.namespace, %identity, pod_id, "proxying for pod");
        let mut pods = self.pods();
        pods.insert(
            info.uid,
            Running {
                stop: raise,
                name: info.name,
                identity,
                netns_cookie: cookie,
            },
        );
        let w = &self.inputs.metrics.workloads;
        w.started.inc();
        w.active.set(pods.len() as i64);
        Ok(())
    }

    /// The pod's id in the capture maps: a pod the eBPF capture did not enroll is refused
    /// (its traffic would not reach ztunnel). Under istio-cni, a number of ztunnel's own.
    fn enrolled_pod_id(&self, cookie: u64) -> Result<u32, InPodError> {
        match self.maps() {
            Some(maps) => maps.pod_of_netns(cookie)?.ok_or(InPodError::NotEnrolled),
            None => Ok(self
                .next_pod_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// Stops serving a pod: listeners and all its connections close now, its pooled HBONE
    /// connections are dropped, and its identity released.
    pub fn del(&self, uid: &str) -> bool {
        let (running, left) = {
            let mut pods = self.pods();
            (pods.remove(uid), pods.len())
        };
        let Some(running) = running else {
            return false;
        };
        let w = &self.inputs.metrics.workloads;
        w.stopped.inc();
        w.active.set(left as i64);
        running.stop.raise();
        self.inputs.pool.evict(uid);
        self.inputs.trust.certs.release(&running.identity);
        info!(%uid, "stopped proxying for pod");
        true
    }

    pub fn has(&self, uid: &str) -> bool {
        self.pods().contains_key(uid)
    }

    /// Stops every pod not in `keep` (after a ZDS snapshot).
    pub fn retain(&self, keep: &HashSet<String>) {
        let stale: Vec<String> = self
            .pods()
            .keys()
            .filter(|u| !keep.contains(*u))
            .cloned()
            .collect();
        for uid in stale {
            warn!(%uid, "pod not in the node agent's snapshot; stopping");
            self.del(&uid);
        }
    }

    /// The pods served, for the config dump's `workloadState`, by uid.
    pub fn served(&self) -> Vec<crate::dump::ServedPod> {
        let mut v: Vec<_> = self
            .pods()
            .iter()
            .map(|(uid, r)| crate::dump::ServedPod {
                uid: uid.clone(),
                name: r.name.clone(),
                namespace: r.identity.namespace.clone(),
                trust_domain: r.identity.trust_domain.clone(),
                service_account: r.identity.service_account.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// True when every pod has a valid certificate (readiness).
    pub fn certificates_ready(&self) -> bool {
        self.pods()
            .values()
            .all(|r| self.inputs.trust.certs.get(&r.identity).is_some())
    }
}

#[derive(Clone, Copy, Debug)]
enum PodListener {
    Outbound,
    Hbone,
    Plaintext,
}

impl PodListener {
    /// The `listener` label of its metrics and log lines.
    fn metric(self) -> Listener {
        match self {
            Self::Outbound => Listener::Outbound,
            Self::Hbone => Listener::Hbone,
            Self::Plaintext => Listener::Plaintext,
        }
    }

    /// Which side its sockets count for in `istio_tcp_sockets_open`.
    fn reporter(self) -> Reporter {
        match self {
            Self::Outbound => Reporter::Source,
            Self::Hbone | Self::Plaintext => Reporter::Destination,
        }
    }
}

/// Accepts until the pod is removed or ztunnel drains; each connection runs until it ends or
/// the pod is removed (a drain lets open connections finish). Accept errors back off and
/// are logged at a bounded rate (see [`Acceptor`]).
async fn accept_loop<H, F>(
    listener: TcpListener,
    mut acceptor: Acceptor,
    stop: Stop,
    drain: DrainWatch,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (stopped, drained) = (stop.clone().wait(), drain.clone().started());
    tokio::pin!(stopped, drained);
    loop {
        tokio::select! {
            (conn, peer) = acceptor.accept(&listener) => {
                // No Nagle: an HBONE frame or a small reply would otherwise wait for
                // the ACK of the previous one (up to the peer's next request).
                if let Err(error) = conn.set_nodelay(true) {
                    debug!(%error, "TCP_NODELAY on an accepted connection");
                }
                let work = handle(conn, peer);
                let stop = stop.clone();
                let guard = drain.track();
                tokio::spawn(async move {
                    let _guard = guard;
                    tokio::select! {
                        () = work => {}
                        () = stop.wait() => {}
                    }
                });
            },
            () = &mut stopped => break,
            () = &mut drained => break,
        }
    }
}
