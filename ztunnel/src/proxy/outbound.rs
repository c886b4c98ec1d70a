//! Outbound: a pod's connection, redirected to its 15001 listener by the capture, goes to its
//! original destination: over HBONE with the pod's own identity when the destination is in
//! the mesh, as plain TCP otherwise.

use super::{record::ConnRecord, relay};
use crate::{
    inpod::PodCtx,
    metrics::TcpLabels,
    shared::{CERT_WAIT, Shared},
    state::{Route, Service},
};
use amesh_hbone::{HBONE_PORT, HboneError, PoolKey};
use amesh_identity::{Identity, tls};
use http::HeaderMap;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

pub async fn handle(shared: Arc<Shared>, pod: Arc<PodCtx>, mut conn: TcpStream, peer: SocketAddr) {
    // Without the original destination there is nowhere safe to send it: refuse.
    let Some(orig) = shared.original_dst(pod.pod_id, peer) else {
        warn!(pod = %pod.name, %peer, "no original destination recorded for this connection; refusing");
        return;
    };
    let state = shared.state.snapshot();
    let pick = shared.next_pick.fetch_add(1, Ordering::Relaxed);
    let me = state.workload_by_name(&pod.namespace, &pod.name);
    let src_ip = me.and_then(|w| w.addresses.first().copied());
    let src = src_ip.map_or(peer, |ip| SocketAddr::new(ip, peer.port()));
    let mut record = ConnRecord::new(shared.metrics.clone(), TcpLabels::new("source"), src, orig);
    record.source(&pod.identity, &pod.name);
    if !shared.state.is_loaded() {
        return record.fail("CONNECT", super::NOT_CONFIGURED);
    }
    let nowhere = crate::state::Locality::default();
    let client = crate::state::Client {
        node: &shared.node,
        locality: me.map_or(&nowhere, |w| &w.locality),
    };
    match state.route(orig, &client, pick) {
        Route::Hbone {
            workload,
            service,
            target,
        } => {
            record.dst = target;
            record.destination(&workload.identity(), &workload.name);
            label_service(&mut record, service.as_deref());
            record.labels.connection_security_policy = "mutual_tls";
            let headers = hbone_headers(&pod, src, service.as_deref());
            match tunnel(&shared, &pod, &workload.identity(), target, headers).await {
                Ok(mut stream) => relay(record, &mut conn, &mut stream, None).await,
                Err(e) => record.fail(e.flag(), &e.to_string()),
            }
        }
        Route::Direct {
            dst,
            workload,
            service,
        } => {
            record.dst = dst;
            if let Some(w) = &workload {
                record.destination(&w.identity(), &w.name);
                record.labels.destination_principal = crate::metrics::UNKNOWN.into();
            }
            label_service(&mut record, service.as_deref());
            match pod.net.connect(dst).await {
                Ok(mut upstream) => relay(record, &mut conn, &mut upstream, None).await,
                Err(e) => record.fail("CONNECT", &format!("connect failed: {e}")),
            }
        }
        Route::NoEndpoint { service } => {
            label_service(&mut record, Some(&service));
            record.fail(
                "NO_HEALTHY_UPSTREAM",
                &format!("no healthy endpoint for service {}", service.hostname),
            );
        }
    }
}

fn label_service(record: &mut ConnRecord, service: Option<&Service>) {
    if let Some(s) = service {
        record.labels.destination_service = s.hostname.clone();
        record.labels.destination_service_name = s.name.clone();
        record.labels.destination_service_namespace = s.namespace.clone();
    }
}

/// Istio's CONNECT request headers: `forwarded` (the client's address, and the service
/// hostname when a service was targeted) and `baggage` (telemetry about the source).
fn hbone_headers(pod: &PodCtx, src: SocketAddr, service: Option<&Service>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let host = service
        .map(|s| format!(";host={}", s.hostname))
        .unwrap_or_default();
    if let Ok(v) = format!("for=\"{src}\"{host}").parse() {
        headers.insert("forwarded", v);
    }
    let baggage = format!(
        "k8s.namespace.name={},k8s.pod.name={},service.name={},service.version=latest",
        pod.namespace, pod.name, pod.name
    );
    if let Ok(v) = baggage.parse() {
        headers.insert("baggage", v);
    }
    headers
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
enum TunnelError {
    #[error("no certificate for {0} yet")]
    NoCertificate(Identity),
    #[error("hbone to {addr}: {source}")]
    Hbone {
        addr: SocketAddr,
        source: HboneError,
    },
}

impl TunnelError {
    /// Istio's response flag for it.
    fn flag(&self) -> &'static str {
        match self {
            Self::NoCertificate(_) => "IDENTITY_ERROR",
            Self::Hbone {
                source: HboneError::Status(s),
                ..
            } if *s == http::StatusCode::UNAUTHORIZED => "DENY",
            // tokio-rustls reports certificate and handshake failures as InvalidData.
            Self::Hbone {
                source: HboneError::Connect(io),
                ..
            } if io.kind() == std::io::ErrorKind::InvalidData => "TLS_FAILURE",
            Self::Hbone { .. } => "CONNECT",
        }
    }
}

/// Opens an HBONE stream to `target` as the pod, expecting the destination's identity.
/// Errors carry Istio's response flag and the reason.
async fn tunnel(
    shared: &Shared,
    pod: &PodCtx,
    dst_identity: &Identity,
    target: SocketAddr,
    headers: HeaderMap,
) -> Result<amesh_hbone::PooledStream, TunnelError> {
    // Never send as a pod whose certificate is not ready: refuse instead (fail closed).
    let cert = shared
        .certs
        .wait_ready(&pod.identity, CERT_WAIT)
        .await
        .ok_or_else(|| TunnelError::NoCertificate(pod.identity.clone()))?;
    let hbone_addr = SocketAddr::new(target.ip(), HBONE_PORT);
    let expected = vec![dst_identity.clone()];
    let key = PoolKey {
        src_pod: pod.uid.clone(),
        src: pod.identity.clone(),
        dst: hbone_addr,
        dst_identities: expected.clone(),
    };
    let (net, metrics) = (&pod.net, &shared.metrics);
    shared
        .pool
        .connect(&key, &target.to_string(), headers, move || async move {
            // Only a new connection needs a TLS configuration.
            let config =
                tls::client_config(&cert, &shared.bundle, expected, shared.provider.clone())
                    .map_err(std::io::Error::other)?;
            metrics.hbone_handshakes.inc();
            let tcp = net.connect(hbone_addr).await?;
            TlsConnector::from(config)
                .connect(tls::server_name(hbone_addr.ip()), tcp)
                .await
        })
        .await
        .map_err(|source| TunnelError::Hbone {
            addr: hbone_addr,
            source,
        })
}
