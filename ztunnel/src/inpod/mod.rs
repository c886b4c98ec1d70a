//! Pods ztunnel proxies for: for each, listeners inside the pod's netns (15001 outbound,
//! 15006 inbound plaintext, 15008 inbound HBONE), registered with the eBPF capture, and the
//! pod's certificate kept ready. Removing a pod closes its listeners and every connection.

mod socket;

pub use socket::PodNet;

use crate::{
    proxy,
    shared::{Shared, Stop},
};
use amesh_identity::{Identity, WorkloadCert};
use amesh_sys::netns::Netns;
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{Arc, Mutex},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{info, warn};

/// One pod as ztunnel serves it.
#[derive(Debug)]
pub struct PodCtx {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    pub pod_id: u32,
    pub net: PodNet,
    /// The TLS server config for the current certificate, rebuilt when it changes.
    pub server_tls: Mutex<Option<(Arc<WorkloadCert>, Arc<rustls::ServerConfig>)>>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    identity: Identity,
}

/// The pods this ztunnel serves.
#[derive(Debug)]
pub struct InPod {
    shared: Arc<Shared>,
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
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            pods: Mutex::default(),
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts serving a pod. Errors are the reason sent back as a NACK.
    pub fn add(&self, info: PodInfo, netns: Netns) -> Result<(), String> {
        let cookie = netns.cookie().map_err(|e| e.to_string())?;
        let pod_id = {
            let maps = self.shared.maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.pod_of_netns(cookie).map_err(|e| e.to_string())?
        }
        .ok_or("the pod's network namespace is not enrolled in the capture programs")?;
        let sa = if info.service_account.is_empty() {
            "default"
        } else {
            &info.service_account
        };
        let identity = Identity::new(&self.shared.trust_domain, &info.namespace, sa);
        let net = PodNet::new(netns, self.shared.home.clone());
        let listen = |addr: &str| -> Result<TcpListener, String> {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| "bad listener address".to_string())?;
            net.listen(addr)
                .map_err(|e| format!("listening on {addr} in the pod: {e}"))
        };
        let outbound4 = listen("127.0.0.1:15001")?;
        let outbound6 = listen("[::1]:15001").ok(); // pods without IPv6 have no [::1]
        let hbone = listen("[::]:15008")?;
        let plaintext = listen("[::]:15006")?;
        {
            let mut maps = self.shared.maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.register_listeners(pod_id, hbone.as_fd(), plaintext.as_fd())
                .map_err(|e| e.to_string())?;
        }
        // Replacing a pod ztunnel already serves (the agent re-sent it) stops the old one.
        self.del(&info.uid);
        self.shared.certs.acquire(&identity);
        let (stop_tx, stop) = Stop::new();
        let pod = Arc::new(PodCtx {
            uid: info.uid.clone(),
            name: info.name.clone(),
            namespace: info.namespace.clone(),
            identity: identity.clone(),
            pod_id,
            net,
            server_tls: Mutex::new(None),
        });
        let shared = self.shared.clone();
        let serve = |listener: TcpListener, kind: ListenerKind| {
            let (pod, shared, stop) = (pod.clone(), shared.clone(), stop.clone());
            tokio::spawn(accept_loop(
                listener,
                stop,
                shared.draining.clone(),
                move |conn, peer| {
                    let (pod, shared) = (pod.clone(), shared.clone());
                    async move {
                        match kind {
                            ListenerKind::Outbound => {
                                proxy::outbound::handle(shared, pod, conn, peer).await
                            }
                            ListenerKind::Hbone => {
                                proxy::inbound::handle_hbone(shared, pod, conn, peer).await
                            }
                            ListenerKind::Plaintext => {
                                proxy::inbound::handle_plaintext(shared, pod, conn, peer).await
                            }
                        }
                    }
                },
            ));
        };
        serve(outbound4, ListenerKind::Outbound);
        if let Some(l) = outbound6 {
            serve(l, ListenerKind::Outbound);
        }
        serve(hbone, ListenerKind::Hbone);
        serve(plaintext, ListenerKind::Plaintext);
        info!(uid = %info.uid, pod = %info.name, namespace = %info.namespace, %identity, pod_id, "proxying for pod");
        self.pods().insert(
            info.uid,
            Running {
                stop: stop_tx,
                identity,
            },
        );
        Ok(())
    }

    /// Stops serving a pod: listeners and all its connections close now.
    pub fn del(&self, uid: &str) -> bool {
        let Some(running) = self.pods().remove(uid) else {
            return false;
        };
        running.stop.send_replace(true);
        self.shared.certs.release(&running.identity);
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

    pub fn uids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pods().keys().cloned().collect();
        v.sort();
        v
    }

    /// True when every pod has a valid certificate (readiness).
    pub fn certificates_ready(&self) -> bool {
        self.pods()
            .values()
            .all(|r| self.shared.certs.get(&r.identity).is_some())
    }
}

#[derive(Clone, Copy, Debug)]
enum ListenerKind {
    Outbound,
    Hbone,
    Plaintext,
}

/// Accepts until the pod is removed or ztunnel drains; each connection runs until it ends or
/// the pod is removed (a drain lets open connections finish).
async fn accept_loop<H, F>(listener: TcpListener, stop: Stop, draining: Stop, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (stopped, drained) = (stop.clone().wait(), draining.wait());
    tokio::pin!(stopped, drained);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    let work = handle(conn, peer);
                    let stop = stop.clone();
                    let guard = crate::shared::ActiveGuard::enter();
                    tokio::spawn(async move {
                        let _guard = guard;
                        tokio::select! {
                            () = work => {}
                            () = stop.wait() => {}
                        }
                    });
                }
                Err(error) => warn!(%error, "accept failed"),
            },
            () = &mut stopped => break,
            () = &mut drained => break,
        }
    }
}
