//! amesh's waypoint: the L7 proxy for the services and workloads bound to it
//! (`istio.io/use-waypoint`). ztunnels send their traffic here over HBONE with the caller's
//! identity; the waypoint checks the destination is bound to it, serves HTTP/1.1 requests
//! (request ids, trace context, Istio's request metrics) or relays opaque TCP, and
//! re-originates HBONE to the chosen endpoint with its **own** identity, which the
//! destination's ztunnel then authorizes.
//!
//! Modules, bottom to top: `config`, `metrics`, `bound` (is this CONNECT for us), `upstream`
//! (HBONE to the endpoint), `http` (the HTTP/1.1 proxy), `proxy` (the 15008 listener and
//! each CONNECT), `admin` (readiness, metrics, config dump); `run` wires them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod bound;
pub mod breaker;
pub mod config;
pub mod counted;
pub mod ext_authz;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod net;
pub mod outlier;
pub mod proxy;
pub mod routes;
pub mod upstream;

use amesh_identity::{CertManager, Identity, tls};
use amesh_proto::{ADDRESS_TYPE_URL, HTTP_ROUTE_TYPE_URL, WAYPOINT_POLICY_TYPE_URL};
use amesh_state::{
    StateReader, StateWriter,
    resources::{Resources, lock},
    xds::AddressHandler,
};
use amesh_xds::{ca_client::IstioCaClient, control};
use anyhow::Context;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::info;

/// Logs to stderr, level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// What the waypoint is: its identity and the host name bindings reach it by.
#[derive(Debug, Clone)]
pub struct Me {
    pub identity: Identity,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
}

impl Me {
    /// `<namespace>/<hostname>`: how bindings, routes and policies name this waypoint.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// Runs until SIGTERM/SIGINT, then drains.
pub async fn run(args: config::Args) -> anyhow::Result<()> {
    let me = Me {
        identity: Identity::new(&args.trust_domain, &args.namespace, args.service_account()),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
        hostname: args.hostname(),
    };
    let root = std::fs::read_to_string(&args.ca_root_file)
        .with_context(|| format!("--ca-root-file {}", args.ca_root_file.display()))?;
    let bundle = tls::TrustBundle::from_pems(std::slice::from_ref(&root))
        .with_context(|| format!("--ca-root-file {}", args.ca_root_file.display()))?;
    let credentials = control::Credentials {
        token: control::Token::file(args.token_file.clone())
            .with_context(|| format!("--token-file {}", args.token_file.display()))?,
        cluster_id: args.cluster_id.clone(),
    };
    let (ns, sa) = args
        .xds_identity
        .split_once('/')
        .context("--xds-identity: expected <namespace>/<service account>")?;
    let control_plane = Identity::new(&args.trust_domain, ns, sa);
    let (control_tls, server_name) = match &args.control_plane_dns_name {
        Some(name) => (
            tls::dns_client_config(&bundle, None, tls::provider())?,
            Some(
                tokio_rustls::rustls::pki_types::ServerName::try_from(name.clone())
                    .with_context(|| format!("--control-plane-dns-name {name}"))?,
            ),
        ),
        None => (
            tls::anonymous_client_config(&bundle, vec![control_plane], tls::provider())?,
            None,
        ),
    };
    let ca_address = args
        .ca_address
        .clone()
        .unwrap_or_else(|| args.xds_address.clone());
    let ca = IstioCaClient::new(
        control::Connector {
            address: ca_address,
            tls: control_tls.clone(),
            server_name: server_name.clone(),
        },
        credentials.clone(),
        vec![root],
    );
    let certs = CertManager::new(Arc::new(ca), Duration::from_secs(args.cert_validity_secs));
    certs.acquire(&me.identity);

    let net = net::Net::new(args.netns.as_deref())
        .with_context(|| format!("--netns {:?}", args.netns))?;
    let registry_and_metrics = metrics::Metrics::new();
    let metrics = registry_and_metrics.metrics.clone();
    let (writer, state) = amesh_state::store();
    let (routes_tx, routes) = tokio::sync::watch::channel(Arc::new(routes::Table::default()));
    let (policies_tx, policies) = tokio::sync::watch::channel(Arc::new(authz::Table::default()));
    let config = amesh_xds::Config {
        address: args.xds_address.clone(),
        server_name,
        node_id: format!(
            "waypoint~{}~{}.{}~{}.svc.{}",
            std::env::var("INSTANCE_IP").unwrap_or_else(|_| "0.0.0.0".into()),
            std::env::var("POD_NAME").unwrap_or_else(|_| args.name.clone()),
            args.namespace,
            args.namespace,
            args.domain_suffix
        ),
        metadata: [
            ("NAMESPACE".to_string(), args.namespace.clone()),
            ("CLUSTER_ID".to_string(), args.cluster_id.clone()),
            // Which waypoint this is: the control plane sends it only its own routes.
            ("WAYPOINT".to_string(), me.hostname.clone()),
        ]
        .into(),
        credentials,
    };
    tokio::spawn(
        xds_client(config, writer, routes_tx, policies_tx).run(move || Ok(control_tls.clone())),
    );

    let inputs = Arc::new(proxy::Inputs {
        me: me.clone(),
        state: state.clone(),
        certs: certs.clone(),
        bundle,
        pool: amesh_hbone::Pool::new(amesh_hbone::PoolConfig::default()),
        metrics,
        next_pick: Default::default(),
        net,
        routes,
        policies,
        h1_pool: Default::default(),
        h2_pool: Default::default(),
        breakers: Default::default(),
        outliers: Default::default(),
    });
    let listener = inputs
        .net
        .listen(args.listen)
        .with_context(|| format!("--listen {}", args.listen))?;
    admin::serve(
        &args,
        state.clone(),
        certs.clone(),
        me.clone(),
        registry_and_metrics,
    )
    .await?;
    info!(
        identity = %me.identity,
        hostname = %me.hostname,
        hbone = %args.listen,
        "amesh-waypoint starting"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(proxy::serve(listener, inputs, stop_rx, open));
    shutdown_signal().await;
    info!("draining: GOAWAY to every connection, in-flight requests finish");
    let _ = stop_tx.send(true);
    // `recv` ends once the accept loop and every connection have dropped their sender.
    match tokio::time::timeout(DRAIN, all_closed.recv()).await {
        Ok(_) => info!("drained"),
        Err(_) => info!(after = ?DRAIN, "drain deadline passed; closing what is left"),
    }
    Ok(())
}

/// How long open connections may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(20);

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The waypoint's xDS client: Istio's `Address` type into the shared state store, amesh's
/// route rules into the route table and its policies into the policy table; all published
/// once each type has had its first response (no request is served before its policies are
/// in: readiness waits for the state, which is published with them), and after every
/// response since.
fn xds_client(
    config: amesh_xds::Config,
    store: StateWriter,
    routes_tx: tokio::sync::watch::Sender<Arc<routes::Table>>,
    policies_tx: tokio::sync::watch::Sender<Arc<authz::Table>>,
) -> amesh_xds::Client {
    let resources = Arc::new(Mutex::new(Resources::default()));
    let published = resources.clone();
    let rules = routes::Store::default();
    let published_rules = rules.clone();
    let policies = authz::Store::default();
    let published_policies = policies.clone();
    amesh_xds::Client::new(config)
        .wildcard(ADDRESS_TYPE_URL, AddressHandler(resources))
        .wildcard(HTTP_ROUTE_TYPE_URL, routes::RouteHandler(rules))
        .wildcard(WAYPOINT_POLICY_TYPE_URL, authz::PolicyHandler(policies))
        .on_synced(move || {
            routes_tx.send_replace(Arc::new(published_rules.table()));
            policies_tx.send_replace(Arc::new(published_policies.table()));
            store.replace(lock(&published).state());
        })
}

/// Whether the waypoint can serve: configuration and its certificate are in.
pub fn ready(state: &StateReader, certs: &CertManager, me: &Me) -> bool {
    state.is_loaded() && certs.get(&me.identity).is_some()
}
