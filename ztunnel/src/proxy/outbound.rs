//! Outbound: a pod's connection, redirected to its 15001 listener by the capture, goes to its
//! original destination: over HBONE with the pod's own identity when the destination is in
//! the mesh, as plain TCP otherwise.

use super::{AccessLog, copy};
use crate::{
    inpod::PodCtx,
    shared::{CERT_WAIT, Shared},
    state::Route,
};
use amesh_hbone::{HBONE_PORT, PoolKey};
use amesh_identity::tls;
use http::HeaderMap;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

pub async fn handle(shared: Arc<Shared>, pod: Arc<PodCtx>, mut conn: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    // Without the original destination there is nowhere safe to send it: refuse.
    let Some(orig) = shared.original_dst(pod.pod_id, peer) else {
        warn!(pod = %pod.name, %peer, "no original destination recorded for this connection; refusing");
        return;
    };
    let state = shared.state.snapshot();
    let pick = shared.next_pick.fetch_add(1, Ordering::Relaxed);
    let src_ip = state
        .workload_by_name(&pod.namespace, &pod.name)
        .and_then(|w| w.addresses.first().copied());
    let mut log = AccessLog {
        direction: "outbound",
        src: src_ip.map_or(peer, |ip| SocketAddr::new(ip, peer.port())),
        dst: orig,
        src_identity: Some(pod.identity.to_string()),
        dst_identity: None,
        dst_workload: None,
        started,
    };
    match state.route(orig, &shared.node, pick) {
        Route::Hbone {
            workload,
            service,
            target,
        } => {
            log.dst_identity = Some(workload.identity().to_string());
            log.dst_workload = Some(&workload.name);
            let mut headers = HeaderMap::new();
            if let Some(ip) = src_ip
                && let Ok(v) = format!("for=\"{ip}\"").parse()
            {
                headers.insert("forwarded", v);
            }
            let baggage = format!(
                "k8s.namespace.name={},k8s.pod.name={}{}",
                pod.namespace,
                pod.name,
                service
                    .as_ref()
                    .map(|s| format!(",service.name={}", s.name))
                    .unwrap_or_default()
            );
            if let Ok(v) = baggage.parse() {
                headers.insert("baggage", v);
            }
            match tunnel(&shared, &pod, &workload.identity(), target, headers).await {
                Ok(mut stream) => finish(&log, copy(&mut conn, &mut stream).await),
                Err(reason) => log.finish(0, 0, &reason),
            }
        }
        Route::Direct { dst, workload, .. } => {
            log.dst = dst;
            log.dst_workload = workload.as_ref().map(|w| w.name.as_str());
            match pod.net.connect(dst).await {
                Ok(mut upstream) => finish(&log, copy(&mut conn, &mut upstream).await),
                Err(e) => log.finish(0, 0, &format!("connect failed: {e}")),
            }
        }
        Route::NoEndpoint { service } => log.finish(
            0,
            0,
            &format!("no healthy endpoint for service {}", service.hostname),
        ),
    }
}

fn finish(log: &AccessLog<'_>, result: std::io::Result<(u64, u64)>) {
    match result {
        Ok((sent, received)) => log.finish(sent, received, "ok"),
        Err(e) => log.finish(0, 0, &format!("copy failed: {e}")),
    }
}

/// Opens an HBONE stream to `target` as the pod, expecting the destination's identity.
async fn tunnel(
    shared: &Shared,
    pod: &PodCtx,
    dst_identity: &amesh_identity::Identity,
    target: SocketAddr,
    headers: HeaderMap,
) -> Result<amesh_hbone::PooledStream, String> {
    // Never send as a pod whose certificate is not ready: refuse instead (fail closed).
    let cert = shared
        .certs
        .wait_ready(&pod.identity, CERT_WAIT)
        .await
        .ok_or_else(|| format!("no certificate for {} yet", pod.identity))?;
    let hbone_addr = SocketAddr::new(target.ip(), HBONE_PORT);
    let expected = vec![dst_identity.clone()];
    let key = PoolKey {
        src: pod.identity.clone(),
        dst: hbone_addr,
        dst_identities: expected.clone(),
    };
    let tls_config = tls::client_config(&cert, &shared.bundle, expected, shared.provider.clone())
        .map_err(|e| e.to_string())?;
    let net = &pod.net;
    shared
        .pool
        .connect(&key, &target.to_string(), headers, move || async move {
            let tcp = net.connect(hbone_addr).await?;
            TlsConnector::from(tls_config)
                .connect(tls::server_name(hbone_addr.ip()), tcp)
                .await
        })
        .await
        .map_err(|e| format!("hbone to {hbone_addr}: {e}"))
}
