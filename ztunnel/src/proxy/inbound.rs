//! Inbound: HBONE (15008) from other pods' ztunnels, and plaintext (15006) from outside the
//! mesh; both end in a connection to the app made inside the pod.

use super::{AccessLog, copy};
use crate::{
    inpod::PodCtx,
    shared::{CERT_WAIT, Shared},
};
use amesh_hbone::server::{self, IncomingConnect, Target};
use amesh_identity::{identity_of, tls};
use http::StatusCode;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

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
    let tls = match TlsAcceptor::from(config).accept(conn).await {
        Ok(t) => t,
        Err(error) => {
            debug!(pod = %pod.name, %peer, %error, "HBONE TLS handshake failed");
            return;
        }
    };
    let Some(peer_identity) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c).ok())
    else {
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

/// Answers one CONNECT: 400 unless it targets this pod, 503 if the app is unreachable, else
/// 200 and the bytes.
async fn connect_app(
    shared: Arc<Shared>,
    pod: Arc<PodCtx>,
    req: IncomingConnect,
    peer: SocketAddr,
    pod_ip: std::net::IpAddr,
) {
    let started = Instant::now();
    let target = match &req.target {
        Target::Addr(a) if a.ip().to_canonical() == pod_ip => *a,
        other => {
            debug!(pod = %pod.name, target = ?other, "HBONE target is not this pod (ip mismatch)");
            return req.refuse(StatusCode::BAD_REQUEST);
        }
    };
    let log = AccessLog {
        direction: "inbound",
        src: peer,
        dst: target,
        src_identity: Some(req.peer_identity.to_string()),
        dst_identity: Some(pod.identity.to_string()),
        dst_workload: Some(&pod.name),
        started,
    };
    let _ = &shared;
    let mut app = match pod.net.connect(target).await {
        Ok(a) => a,
        Err(e) => {
            log.finish(0, 0, &format!("app unreachable: {e}"));
            return req.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let mut stream = match req.accept() {
        Ok(s) => s,
        Err(e) => return log.finish(0, 0, &format!("answering CONNECT: {e}")),
    };
    match copy(&mut stream, &mut app).await {
        Ok((sent, received)) => log.finish(sent, received, "ok"),
        Err(e) => log.finish(0, 0, &format!("copy failed: {e}")),
    }
}

pub async fn handle_plaintext(
    shared: Arc<Shared>,
    pod: Arc<PodCtx>,
    mut conn: TcpStream,
    peer: SocketAddr,
) {
    let _ = &shared;
    let Ok(local) = conn.local_addr() else { return };
    // The capture kept the original destination as the local address.
    let target = SocketAddr::new(local.ip().to_canonical(), local.port());
    let log = AccessLog {
        direction: "inbound",
        src: peer,
        dst: target,
        src_identity: None,
        dst_identity: Some(pod.identity.to_string()),
        dst_workload: Some(&pod.name),
        started: Instant::now(),
    };
    match pod.net.connect(target).await {
        Ok(mut app) => match copy(&mut conn, &mut app).await {
            Ok((sent, received)) => log.finish(sent, received, "ok"),
            Err(e) => log.finish(0, 0, &format!("copy failed: {e}")),
        },
        Err(e) => log.finish(0, 0, &format!("app unreachable: {e}")),
    }
}
