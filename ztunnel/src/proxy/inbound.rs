//! Inbound: HBONE (15008) from other pods' ztunnels, and plaintext (15006) from outside the
//! mesh. Policy decides before any byte reaches the app; allowed connections end in a
//! connection to the app made inside the pod, and are re-checked when policies change.

use super::{
    authz::{Facts, authorize},
    record::ConnRecord,
    relay,
};
use crate::{
    inpod::PodCtx,
    metrics::TcpLabels,
    shared::{CERT_WAIT, Shared},
};
use amesh_hbone::server::{self, IncomingConnect, Target};
use amesh_identity::{identity_of, tls};
use amesh_policy::{Decision, MtlsMode};
use http::StatusCode;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// Ports ztunnel itself listens on (Istio's list). Forwarding a connection to one of them
/// would send it straight back to ztunnel, forever: such connections are refused.
const ZTUNNEL_PORTS: [u16; 8] = [15000, 15001, 15006, 15008, 15020, 15021, 15053, 15080];

/// Bound on the TLS handshake of an inbound HBONE connection.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_ztunnel_port(port: u16) -> bool {
    ZTUNNEL_PORTS.contains(&port)
}

/// The TLS server config presenting the pod's current certificate.
async fn server_config(shared: &Shared, pod: &PodCtx) -> Option<Arc<rustls::ServerConfig>> {
    let cert = shared.certs.wait_ready(&pod.identity, CERT_WAIT).await?;
    let mut cached = pod.server_tls.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((c, cfg)) = cached.as_ref()
        && Arc::ptr_eq(c, &cert)
    {
        return Some(cfg.clone());
    }
    let cfg = tls::server_config(&cert, &shared.bundle, shared.provider.clone()).ok()?;
    *cached = Some((cert, cfg.clone()));
    Some(cfg)
}

pub async fn handle_hbone(
    shared: Arc<Shared>,
    pod: Arc<PodCtx>,
    conn: TcpStream,
    peer: SocketAddr,
) {
    let Ok(local) = conn.local_addr() else { return };
    // Fail closed: no certificate, no TLS, no traffic.
    let Some(config) = server_config(&shared, &pod).await else {
        warn!(pod = %pod.name, %peer, "refusing HBONE: the pod's certificate is not ready");
        return;
    };
    // A peer that never finishes its handshake must not hold a task (and drain) forever.
    let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(conn));
    let tls = match accept.await {
        Ok(Ok(t)) => t,
        Ok(Err(error)) => {
            debug!(pod = %pod.name, %peer, %error, "HBONE TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(pod = %pod.name, %peer, "HBONE TLS handshake timed out");
            return;
        }
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let Some(peer_identity) = cert.and_then(|c| identity_of(c).ok()) else {
        return;
    };
    let pod_ip = local.ip().to_canonical();
    let handler = {
        let (shared, pod) = (shared.clone(), pod.clone());
        move |req: IncomingConnect| {
            let (shared, pod) = (shared.clone(), pod.clone());
            async move { connect_app(shared, pod, req, peer, pod_ip).await }
        }
    };
    let _ = server::serve(tls, peer_identity, handler, shared.draining.clone().wait()).await;
}

/// Answers one CONNECT: 400 unless it targets this pod, 401 if policy refuses, 503 if the app
/// is unreachable, else 200 and the bytes.
async fn connect_app(
    shared: Arc<Shared>,
    pod: Arc<PodCtx>,
    req: IncomingConnect,
    peer: SocketAddr,
    pod_ip: IpAddr,
) {
    let target = match &req.target {
        Target::Addr(a) if a.ip().to_canonical() == pod_ip => *a,
        other => {
            debug!(pod = %pod.name, target = ?other, "HBONE target is not this pod (ip mismatch)");
            return req.refuse(StatusCode::BAD_REQUEST);
        }
    };
    if is_ztunnel_port(target.port()) {
        warn!(pod = %pod.name, %target, "refusing a CONNECT to one of ztunnel's own ports (it would loop)");
        return req.refuse(StatusCode::BAD_REQUEST);
    }
    let mut record = ConnRecord::new(
        shared.metrics.clone(),
        TcpLabels::new("destination"),
        peer,
        target,
    );
    let source_workload = req.peer_identity.service_account.clone();
    record.source(&req.peer_identity, &source_workload);
    record.destination(&pod.identity, &pod.name);
    record.labels.connection_security_policy = "mutual_tls";
    let facts = Facts {
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        source: Some(req.peer_identity.clone()),
        source_ip: peer.ip().to_canonical(),
        destination_ip: target.ip().to_canonical(),
        destination_port: target.port(),
    };
    if !shared.state.is_loaded() {
        record.fail("CONNECT", super::NOT_CONFIGURED);
        return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
    }
    match authorize(&shared.state.snapshot(), &facts, &shared.metrics) {
        Decision::Deny { by } => {
            record.fail("DENY", &format!("denied by {by}"));
            return req.refuse(StatusCode::UNAUTHORIZED);
        }
        Decision::Allow { by } => record.policy = by,
    }
    let (_live, kill) = shared.live.register(facts);
    let mut app = match pod.net.connect(target).await {
        Ok(a) => a,
        Err(e) => {
            record.fail("CONNECT", &format!("app unreachable: {e}"));
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    match req.accept() {
        Ok(mut stream) => relay(record, &mut stream, &mut app, Some(kill)).await,
        Err(e) => record.fail("CONNECT", &format!("answering CONNECT: {e}")),
    }
}

pub async fn handle_plaintext(
    shared: Arc<Shared>,
    pod: Arc<PodCtx>,
    mut conn: TcpStream,
    peer: SocketAddr,
) {
    let Ok(local) = conn.local_addr() else { return };
    // The capture kept the original destination as the local address.
    let target = SocketAddr::new(local.ip().to_canonical(), local.port());
    if is_ztunnel_port(target.port()) {
        warn!(pod = %pod.name, %peer, %target, "refusing plaintext to one of ztunnel's own ports (it would loop)");
        return;
    }
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut record = ConnRecord::new(
        shared.metrics.clone(),
        TcpLabels::new("destination"),
        peer,
        target,
    );
    record.destination(&pod.identity, &pod.name);
    if !shared.state.is_loaded() {
        return record.fail("CONNECT", super::NOT_CONFIGURED);
    }
    let state = shared.state.snapshot();
    // STRICT peer authentication: plaintext is refused; the connection closes unanswered.
    let uid = state
        .workload_by_name(&pod.namespace, &pod.name)
        .map(|w| w.uid.clone())
        .unwrap_or_default();
    if state.mtls_mode(&pod.namespace, &uid, target.port()) == MtlsMode::Strict {
        return record.fail("DENY", "plaintext refused: peer authentication is STRICT");
    }
    let facts = Facts {
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        source: None,
        source_ip: peer.ip(),
        destination_ip: target.ip(),
        destination_port: target.port(),
    };
    match authorize(&state, &facts, &shared.metrics) {
        Decision::Deny { by } => return record.fail("DENY", &format!("denied by {by}")),
        Decision::Allow { by } => record.policy = by,
    }
    let (_live, kill) = shared.live.register(facts);
    match pod.net.connect(target).await {
        Ok(mut app) => relay(record, &mut conn, &mut app, Some(kill)).await,
        Err(e) => record.fail("CONNECT", &format!("app unreachable: {e}")),
    }
}
