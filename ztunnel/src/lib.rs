//! amesh's ztunnel: the per-node L4 proxy.
//!
//! For every pod the node agent hands over (ZDS), ztunnel opens listeners inside the pod's
//! network namespace and registers them with the eBPF capture; captured connections are
//! carried over HBONE (HTTP/2 CONNECT in mutual TLS, port 15008) with the pod's SPIFFE
//! identity, or passed through as plain TCP when the destination is not in the mesh.
#![forbid(unsafe_code)]

pub mod state;

pub mod admin;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod shared;
pub mod zds;

use amesh_ebpf_loader::{CaptureMaps, PinLayout};
use amesh_hbone::{Pool, PoolConfig};
use amesh_identity::{CertManager, LocalCa, tls};
use amesh_sys::netns::Netns;
use anyhow::Context;
use shared::{Shared, Stop};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// Runs ztunnel until SIGTERM/SIGINT or `/quitquitquit`, then drains.
pub async fn run(args: config::Args, log: config::LogHandle) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let (drain_tx, draining) = Stop::new();
    let shared = shared_state(&args, &mut registry, draining).await?;
    recheck_on_change(&shared);
    let pods = Arc::new(inpod::InPod::new(shared.clone()));
    let endpoints = Arc::new(admin::Endpoints {
        shared: shared.clone(),
        pods: pods.clone(),
        registry,
        log,
        snapshot_received: Default::default(),
        quit: Default::default(),
    });
    serve_endpoints(&args, &endpoints).await?;
    tokio::spawn(zds::run(
        args.zds_socket.clone(),
        pods,
        endpoints.snapshot_received.clone(),
    ));
    info!(node = %args.node, zds = %args.zds_socket.display(), "ztunnel running");
    tokio::select! {
        () = wait_for_signal() => {}
        () = endpoints.quit.notified() => {}
    }
    info!(
        deadline_secs = args.drain_secs,
        "draining: no new connections; open ones may finish"
    );
    drain_tx.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while Instant::now() < deadline && shared::active_connections() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!(open = shared::active_connections(), "exiting");
    Ok(())
}

/// Configuration, certificates, capture maps and metrics: what every pod proxy shares.
async fn shared_state(
    args: &config::Args,
    registry: &mut prometheus_client::registry::Registry,
    draining: Stop,
) -> anyhow::Result<Arc<Shared>> {
    let ca = Arc::new(
        LocalCa::load_or_create(&args.ca_dir, &args.trust_domain).context("in-process CA")?,
    );
    let certs = CertManager::new(ca.clone(), Duration::from_secs(args.cert_validity_secs));
    let bundle = tls::TrustBundle::from_pems(&certs.roots())?;
    let state = state::StateStore::default();
    match (&args.config, args.xds_address) {
        (Some(file), _) => state::watch_file(file.clone(), state.clone())?,
        (None, Some(address)) => start_xds(args, address, ca, bundle.clone(), state.clone())?,
        (None, None) => anyhow::bail!("either --config or --xds-address is required"),
    }
    let maps = open_capture_maps(&args.capture_pins).await;
    Ok(Arc::new(Shared {
        node: args.node.clone(),
        trust_domain: args.trust_domain.clone(),
        state,
        certs,
        bundle,
        provider: tls::provider(),
        pool: Pool::new(PoolConfig::default()),
        maps: Mutex::new(maps),
        home: Arc::new(Netns::open("/proc/self/ns/net")?),
        next_pick: Default::default(),
        draining,
        metrics: Arc::new(metrics::Metrics::register(registry)),
        live: Default::default(),
    }))
}

/// Starts the xDS client. ztunnel authenticates to the control plane with a certificate for
/// its own identity (`istio-system/ztunnel`) from the mesh CA, re-issued per connection, and
/// accepts only a control plane presenting `--xds-identity`.
fn start_xds(
    args: &config::Args,
    address: std::net::SocketAddr,
    ca: Arc<LocalCa>,
    bundle: tls::TrustBundle,
    store: state::StateStore,
) -> anyhow::Result<()> {
    let (ns, sa) = args
        .xds_identity
        .split_once('/')
        .context("--xds-identity: expected <namespace>/<service account>")?;
    let server = amesh_identity::Identity::new(&args.trust_domain, ns, sa);
    let own = amesh_identity::Identity::new(&args.trust_domain, "istio-system", "ztunnel");
    let validity = Duration::from_secs(args.cert_validity_secs);
    let tls = move || {
        let cert = ca.issue(&own, validity).map_err(|e| e.to_string())?;
        tls::client_config(&cert, &bundle, vec![server.clone()], tls::provider())
            .map_err(|e| e.to_string())
    };
    let config = state::xds_client::XdsConfig {
        address,
        node_id: format!(
            "ztunnel~0.0.0.0~ztunnel-{node}.istio-system~istio-system.svc.cluster.local",
            node = args.node
        ),
        node_name: args.node.clone(),
        cluster_id: args.cluster_id.clone(),
    };
    tokio::spawn(state::xds_client::run(config, tls, store));
    Ok(())
}

/// A configuration change re-checks every open inbound connection against the new policies.
fn recheck_on_change(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let mut changes = shared.state.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let state = changes.borrow_and_update().clone();
            shared.live.recheck(&state, &shared.metrics);
        }
    });
}

/// Binds the admin, readiness and metrics endpoints and serves them.
async fn serve_endpoints(
    args: &config::Args,
    endpoints: &Arc<admin::Endpoints>,
) -> anyhow::Result<()> {
    for (addr, role) in [
        (args.admin, admin::Role::Admin),
        (args.readiness, admin::Role::Readiness),
        (args.metrics, admin::Role::Metrics),
    ] {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {role:?} endpoint {addr}"))?;
        info!(endpoint = ?role, address = %listener.local_addr()?, "listening");
        tokio::spawn(admin::serve(listener, role, endpoints.clone()));
    }
    Ok(())
}

/// The capture maps the node agent pinned; waits for them (the agent may start later).
async fn open_capture_maps(pins: &std::path::Path) -> CaptureMaps {
    let mut retry = Duration::from_millis(100);
    loop {
        match CaptureMaps::open_pinned(&PinLayout::new(pins)) {
            Ok(m) => return m,
            Err(error) => {
                warn!(pins = %pins.display(), %error, "capture maps not available yet (is the node agent running?)");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
