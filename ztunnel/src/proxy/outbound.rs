//! Outbound: a pod's connection, redirected to its 15001 listener by the capture, goes to its
//! original destination: over HBONE with the pod's own identity when the destination is in
//! the mesh, as plain TCP otherwise.

use super::{
    PodCtx, ProxyInputs, error::OutboundError, inputs::CERT_WAIT, record::ConnRecord, relay,
};
use crate::{
    metrics::{Listener, RefuseReason, Reporter, SecurityPolicy, TcpLabels},
    state::{Route, Service},
};
use amesh_hbone::{
    PoolKey,
    metadata::{self, Baggage},
};
use amesh_identity::{Identity, tls};
use amesh_ratelimit::{Throttle, WARN_EVERY};
use http::HeaderMap;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, info_span, warn};

/// Logged at a bounded rate: a flood of such connections must not flood the log.
static NO_ORIGINAL_DST_WARNING: Throttle = Throttle::new(WARN_EVERY);

pub async fn handle(inputs: Arc<ProxyInputs>, pod: Arc<PodCtx>, conn: TcpStream, peer: SocketAddr) {
    // Without the original destination there is nowhere safe to send it: refuse.
    let Some(orig) = inputs.orig_dst.take(pod.pod_id, peer, &conn) else {
        inputs
            .metrics
            .listeners
            .refuse(Listener::Outbound, RefuseReason::NoOriginalDestination);
        if let Some(suppressed) = NO_ORIGINAL_DST_WARNING.allow() {
            warn!(pod = %pod.name, %peer, suppressed, "no original destination recorded for this connection; refusing");
        }
        return;
    };
    let span = info_span!("outbound", pod = %pod.name, src = %peer, dst = %orig, src.identity = %pod.identity);
    forward(inputs, pod, conn, peer, orig)
        .instrument(span)
        .await
}

/// Routes the connection to its original destination `orig` and relays it.
async fn forward(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    mut conn: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
) {
    let state = inputs.state.snapshot();
    let pick = inputs.next_pick.fetch_add(1, Ordering::Relaxed);
    let me = state.workload_by_name(&pod.namespace, &pod.name);
    let src_ip = me.and_then(|w| w.addresses.first().copied());
    let src = src_ip.map_or(peer, |ip| SocketAddr::new(ip, peer.port()));
    let labels = TcpLabels::new(Reporter::Source);
    let mut record = ConnRecord::new(inputs.metrics.tcp.clone(), labels, src, orig);
    match me {
        Some(w) => record.source_workload(w),
        None => record.labels.source_workload = pod.name.clone(),
    }
    record.source_principal(&pod.identity);
    if !inputs.state.is_loaded() {
        return fail(record, OutboundError::NotConfigured);
    }
    let nowhere = crate::state::Locality::default();
    let client = crate::state::Client {
        node: &inputs.id.node,
        locality: me.map_or(&nowhere, |w| &w.locality),
        network: &inputs.id.network,
        identity: Some(&pod.identity),
        ip: src_ip,
        only: None,
        excluded: &[],
    };
    match state.route(orig, &client, pick) {
        Route::Hbone {
            workload: peer,
            service,
            target,
            hbone,
            expected,
        }
        // Istio labels a connection through a waypoint with the waypoint as its destination.
        | Route::Waypoint {
            waypoint: peer,
            service,
            target,
            hbone,
            expected,
            ..
        } => {
            record.dst = target;
            record.destination_workload(&peer);
            label_service(&mut record, service.as_deref());
            record.labels.connection_security_policy = SecurityPolicy::MutualTls;
            let baggage = match me {
                Some(w) => w.telemetry.baggage_header.clone(),
                None => pod_baggage(&pod).to_header(),
            };
            let headers = hbone_headers(baggage, src, service.as_deref());
            match tunnel(&inputs, &pod, expected, hbone, target, headers).await {
                Ok(mut stream) => relay(record, &mut conn, &mut stream, None).await,
                Err(e) => fail(record, e),
            }
        }
        Route::NoWaypoint {
            waypoint,
            service,
            workload,
        } => {
            if let Some(w) = &workload {
                record.destination_workload(w);
            }
            label_service(&mut record, service.as_deref());
            let destination = match (&service, &workload) {
                (Some(s), _) => s.hostname.clone(),
                (None, Some(w)) => format!("{}/{}", w.namespace, w.name),
                (None, None) => orig.to_string(),
            };
            let e = OutboundError::NoWaypoint {
                waypoint: waypoint.to_string(),
                destination,
            };
            fail(record, e);
        }
        Route::Direct {
            dst,
            workload: None,
            service: None,
        } if inputs.registry_only => {
            record.dst = dst;
            fail(record, OutboundError::RegistryOnly { destination: dst });
        }
        Route::Resolve {
            hostname,
            port,
            v4,
            workload,
            service,
        } => {
            record.destination_workload(&workload);
            record.labels.destination_principal = crate::metrics::UNKNOWN.into();
            label_service(&mut record, Some(&service));
            let ips = match inputs.dns.resolve(&hostname, v4, &pod.net).await {
                Ok(ips) => ips,
                Err(reason) => return fail(record, OutboundError::Resolve { hostname, reason }),
            };
            let dst = SocketAddr::new(ips[fastrand::usize(..ips.len())], port);
            record.dst = dst;
            match pod.net.connect(dst).await {
                Ok(mut upstream) => relay(record, &mut conn, &mut upstream, None).await,
                Err(e) => fail(record, OutboundError::Direct(e)),
            }
        }
        Route::Direct {
            dst,
            workload,
            service,
        } => {
            record.dst = dst;
            if let Some(w) = &workload {
                record.destination_workload(w);
                // Plain TCP proves no identity.
                record.labels.destination_principal = crate::metrics::UNKNOWN.into();
            }
            label_service(&mut record, service.as_deref());
            match pod.net.connect(dst).await {
                Ok(mut upstream) => relay(record, &mut conn, &mut upstream, None).await,
                Err(e) => fail(record, OutboundError::Direct(e)),
            }
        }
        Route::OtherNetwork { workload, service } => {
            record.destination_workload(&workload);
            label_service(&mut record, service.as_deref());
            let e = OutboundError::OtherNetwork {
                workload: format!("{}/{}", workload.namespace, workload.name),
                network: workload.network.clone(),
            };
            fail(record, e);
        }
        Route::NoEndpoint { service } => {
            label_service(&mut record, Some(&service));
            let service = service.hostname.clone();
            fail(record, OutboundError::NoHealthyUpstream { service });
        }
    }
}

fn fail(record: ConnRecord, e: OutboundError) {
    record.fail(e.response_flag(), &e);
}

fn label_service(record: &mut ConnRecord, service: Option<&Service>) {
    if let Some(s) = service {
        record.labels.destination_service = s.hostname.clone();
        record.labels.destination_service_name = s.name.clone();
        record.labels.destination_service_namespace = s.namespace.clone();
    }
}

/// Istio's CONNECT request headers: `forwarded` (the client's address, and the service
/// hostname when a service was targeted), `baggage` (who the source is, for the peer's
/// telemetry) and a fresh `traceparent`.
fn hbone_headers(
    baggage: Option<http::HeaderValue>,
    src: SocketAddr,
    service: Option<&Service>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let host = service
        .map(|s| format!(";host={}", s.hostname))
        .unwrap_or_default();
    if let Ok(v) = format!("for=\"{src}\"{host}").parse() {
        headers.insert("forwarded", v);
    }
    if let Some(v) = baggage {
        headers.insert(metadata::BAGGAGE, v);
    }
    headers.insert(metadata::TRACEPARENT, metadata::new_traceparent());
    headers
}

/// The baggage of a pod the state has no workload for yet: its namespace and name.
fn pod_baggage(pod: &PodCtx) -> Baggage {
    Baggage {
        namespace: pod.namespace.clone(),
        workload_kind: "pod".into(),
        workload_name: pod.name.clone(),
        ..Default::default()
    }
}

/// Opens an HBONE stream as the pod to `hbone` (an endpoint's or a waypoint's 15008) for
/// `target` (the `:authority`), expecting one of `expected` there.
async fn tunnel(
    inputs: &ProxyInputs,
    pod: &PodCtx,
    expected: Vec<Identity>,
    hbone_addr: SocketAddr,
    target: SocketAddr,
    headers: HeaderMap,
) -> Result<amesh_hbone::PooledStream, OutboundError> {
    // Never send as a pod whose certificate is not ready: refuse instead (fail closed).
    let cert = inputs
        .trust
        .certs
        .wait_ready(&pod.identity, CERT_WAIT)
        .await
        .ok_or_else(|| OutboundError::NoCertificate(pod.identity.clone()))?;
    let key = PoolKey {
        src_pod: pod.uid.clone(),
        src: pod.identity.clone(),
        dst: hbone_addr,
        dst_identities: expected.clone(),
    };
    let (net, metrics) = (&pod.net, &inputs.metrics);
    inputs
        .pool
        .connect(&key, &target.to_string(), headers, move || async move {
            // Only a new connection needs a TLS configuration.
            let config = tls::client_config(
                &cert,
                &inputs.trust.bundle,
                expected,
                inputs.trust.provider.clone(),
            )
            .map_err(std::io::Error::other)?;
            metrics.hbone.handshakes.inc();
            let tcp = net.connect(hbone_addr).await?;
            TlsConnector::from(config)
                .connect(tls::server_name(hbone_addr.ip()), tcp)
                .await
        })
        .await
        .map_err(|source| OutboundError::Hbone {
            addr: hbone_addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LoadBalancing;

    #[test]
    fn connect_headers_are_istios() {
        let svc = Service {
            name: "web".into(),
            namespace: "shop".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            vips: vec![],
            ports: Default::default(),
            app_protocols: Default::default(),
            load_balancing: LoadBalancing::default(),
            subject_alt_names: vec![],
            waypoint: None,
        };
        let baggage = Baggage {
            cluster: "Kubernetes".into(),
            namespace: "shop".into(),
            workload_kind: "deployment".into(),
            workload_name: "cart".into(),
            service_name: "cart".into(),
            service_version: "v2".into(),
            ..Default::default()
        };
        let src: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let h = hbone_headers(baggage.to_header(), src, Some(&svc));
        assert_eq!(
            h["forwarded"],
            "for=\"10.0.0.5:40000\";host=web.shop.svc.cluster.local"
        );
        assert_eq!(
            h[metadata::BAGGAGE],
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,\
             service.name=cart,service.version=v2"
        );
        assert!(
            h[metadata::TRACEPARENT]
                .to_str()
                .unwrap()
                .starts_with("00-")
        );
        let direct = hbone_headers(baggage.to_header(), src, None);
        assert_eq!(direct["forwarded"], "for=\"10.0.0.5:40000\"");
        assert_ne!(
            direct[metadata::TRACEPARENT],
            h[metadata::TRACEPARENT],
            "a trace per CONNECT"
        );
    }
}
