//! amesh's ztunnel: the per-node L4 proxy.
//!
//! For every pod the node agent hands over (ZDS), ztunnel opens listeners inside the pod's
//! network namespace and registers them with the eBPF capture; captured connections are
//! carried over HBONE (HTTP/2 CONNECT in mutual TLS, port 15008) with the pod's SPIFFE
//! identity, or passed through as plain TCP when the destination is not in the mesh.
#![forbid(unsafe_code)]

pub mod state;

pub mod accept;
pub mod admin;
pub mod cli;
pub mod config;
pub mod control_runtime;
pub mod dns;
pub mod drain;
pub mod dump;
pub mod inpod;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod signal;
pub mod zds;

// The control-plane clients live in amesh-xds; these paths stay for ztunnel's callers.
pub use amesh_xds::{ca_client, control};

use amesh_ebpf_loader::{CaptureMaps, PinLayout};
use amesh_hbone::{Pool, PoolConfig};
use amesh_identity::{CertManager, LocalCa, tls};
use amesh_sys::netns::Netns;
use anyhow::Context;
use control_runtime::ControlRuntime;
use proxy::{
    ProxyInputs,
    inputs::{NodeIdentity, OriginalDestinations, Parts, Trust},
};
use rustls::pki_types::ServerName;
use std::{sync::Arc, time::Duration};
use tokio::runtime::Handle;
use tracing::{info, warn};

/// Runs ztunnel until SIGTERM/SIGINT or `/quitquitquit`, then drains.
///
/// Two runtimes, as Istio's ztunnel has: the data path (the caller's runtime: the pods'
/// listeners and connections, the ZDS client, policy re-checks) and a small control runtime
/// of its own ([`ControlRuntime`]: the xDS client or file watch, certificate fetch and
/// renewal, the admin, readiness and metrics endpoints), so that a control-plane storm or a
/// flood of the admin port cannot take worker time from traffic.
pub async fn run(args: config::Args, log: logging::LogControl) -> anyhow::Result<()> {
    let control = ControlRuntime::start().context("starting the control runtime")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let (drain, drain_watch) = drain::new();
    let (writer, state) = state::store();
    let credentials = control::Credentials {
        token: match &args.token_file {
            Some(f) => control::Token::file(f.clone())
                .with_context(|| format!("--token-file {}", f.display()))?,
            None => control::Token::None,
        },
        cluster_id: args.cluster_id.clone(),
    };
    let check = ControlPlaneCheck::from_args(&args)?;
    let (certs, bundle, xds_tls) = certificates(&args, &check, &credentials, control.handle())?;
    match (&args.config, &args.xds_address) {
        (Some(file), _) => {
            // The watch spawns its task where it is called from: the control runtime.
            let _on_control = control.handle().enter();
            state::watch_file(file.clone(), writer)?;
        }
        (None, Some(address)) => {
            info!(xds = %address, verified_by = %check, "control plane");
            let config = amesh_xds::Config {
                address: address.clone(),
                server_name: check.server_name(),
                node_id: node_id(&args.node),
                metadata: node_metadata(&args),
                credentials,
            };
            control.handle().spawn(state::xds_client::run(
                config,
                metrics.xds.clone(),
                xds_tls,
                writer,
            ));
        }
        (None, None) => anyhow::bail!("either --config or --xds-address is required"),
    }
    let (enrolment_maps, orig_dst) = match args.capture {
        config::CaptureMode::Ebpf => (
            Some(open_capture_maps(&args.capture_pins).await),
            OriginalDestinations::new(open_capture_maps(&args.capture_pins).await),
        ),
        config::CaptureMode::Iptables => {
            info!(
                "capture: istio-cni's in-pod iptables rules (original destinations from SO_ORIGINAL_DST)"
            );
            (None, OriginalDestinations::Iptables)
        }
    };
    let dns = Arc::new(dns_proxy(&args, metrics.dns.clone()).await);
    let inputs = ProxyInputs::new(Parts {
        id: NodeIdentity {
            node: args.node.clone(),
            trust_domain: args.trust_domain.clone(),
            network: args.network.clone(),
        },
        state: state.clone(),
        trust: Trust {
            certs: certs.clone(),
            bundle,
            provider: tls::provider(),
        },
        pool: Pool::new(PoolConfig::default()),
        orig_dst,
        home: Arc::new(Netns::open("/proc/self/ns/net")?),
        drain: drain_watch,
        metrics: metrics.clone(),
        max_hbone_handshakes: args.max_hbone_handshakes as usize,
        dns,
        registry_only: args.outbound_traffic_policy == config::OutboundTrafficPolicy::RegistryOnly,
    });
    recheck_on_change(&inputs);
    let pods = Arc::new(inpod::InPod::new(inputs.clone(), enrolment_maps));
    let endpoints = Arc::new(admin::Endpoints {
        node: args.node.clone(),
        state,
        certs,
        listener_metrics: metrics.listeners.clone(),
        pods: pods.clone(),
        registry,
        log,
        snapshot_received: Default::default(),
        quit: Default::default(),
    });
    serve_endpoints(&args, &endpoints, control.handle()).await?;
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
    let open = drain.drain(Duration::from_secs(args.drain_secs)).await;
    info!(open, "exiting");
    Ok(())
}

/// The pods' DNS proxy, forwarding to the resolvers of `--dns-resolv-conf` (read off the
/// runtime). A file that cannot be read leaves it without upstreams: mesh names are still
/// answered, other queries get SERVFAIL, and the reason is logged.
async fn dns_proxy(args: &config::Args, metrics: metrics::DnsMetrics) -> dns::Dns {
    let path = args.dns_resolv_conf.clone();
    let read = tokio::task::spawn_blocking(move || dns::resolv_conf::read(&path)).await;
    let upstreams = match read {
        Ok(Ok((upstreams, skipped))) => {
            for line in skipped {
                warn!(file = %args.dns_resolv_conf.display(), %line, "resolv.conf line skipped");
            }
            info!(servers = ?upstreams.servers, "DNS proxy upstreams");
            upstreams
        }
        Ok(Err(e)) => {
            warn!(error = %e, "the DNS proxy has no upstream resolvers; only mesh names resolve");
            dns::resolv_conf::Upstreams::default()
        }
        Err(e) => {
            warn!(error = %e, "reading the resolv.conf failed");
            dns::resolv_conf::Upstreams::default()
        }
    };
    dns::Dns {
        forwarder: dns::forward::Forwarder::new(upstreams),
        domain: args
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase(),
        metrics,
    }
}

/// The xDS node id in Istio ztunnel's shape, `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`,
/// from the downward-API variables a DaemonSet sets (`INSTANCE_IP`, `POD_NAME`,
/// `POD_NAMESPACE`), or made up from the node name outside Kubernetes.
fn node_id(node: &str) -> String {
    let var = |k: &str, default: String| std::env::var(k).unwrap_or(default);
    let ip = var("INSTANCE_IP", "0.0.0.0".into());
    let pod = var("POD_NAME", format!("ztunnel-{node}"));
    let ns = var("POD_NAMESPACE", "istio-system".into());
    format!("ztunnel~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
}

/// The node metadata Istio's ztunnel sends, from the same downward-API variables.
fn node_metadata(args: &config::Args) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::from([
        ("NODE_NAME".to_string(), args.node.clone()),
        ("CLUSTER_ID".to_string(), args.cluster_id.clone()),
    ]);
    for (var, key) in [
        ("POD_NAME", "NAME"),
        ("POD_NAMESPACE", "NAMESPACE"),
        ("INSTANCE_IP", "INSTANCE_IPS"),
    ] {
        if let Ok(v) = std::env::var(var) {
            m.insert(key.to_string(), v);
        }
    }
    // Istio's `ISTIO_META_<KEY>` variables are metadata `<KEY>`, as its ztunnel sends them.
    for (var, value) in std::env::vars() {
        if let Some(key) = var.strip_prefix("ISTIO_META_").filter(|k| !k.is_empty()) {
            m.insert(key.to_string(), value);
        }
    }
    m
}

/// `<namespace>/<service account>` from a flag, as an identity.
fn identity_arg(
    trust_domain: &str,
    value: &str,
    flag: &str,
) -> anyhow::Result<amesh_identity::Identity> {
    let (ns, sa) = value
        .split_once('/')
        .with_context(|| format!("{flag}: expected <namespace>/<service account>"))?;
    Ok(amesh_identity::Identity::new(trust_domain, ns, sa))
}

/// How TLS to the control plane is set up, per connection.
type ControlTls = Box<dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Send>;

/// How ztunnel recognises its control plane: by SPIFFE identity (amesh's control plane) or
/// by host name (istiod, as Istio's ztunnel does).
#[derive(Clone, Debug)]
enum ControlPlaneCheck {
    Identity(amesh_identity::Identity),
    HostName(String),
}

impl std::fmt::Display for ControlPlaneCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Identity(id) => write!(f, "identity {id}"),
            Self::HostName(name) => write!(f, "host name {name}"),
        }
    }
}

impl ControlPlaneCheck {
    fn from_args(args: &config::Args) -> anyhow::Result<Self> {
        Ok(match &args.control_plane_dns_name {
            Some(name) => {
                ServerName::try_from(name.clone())
                    .with_context(|| format!("--control-plane-dns-name {name}"))?;
                Self::HostName(name.clone())
            }
            None => Self::Identity(identity_arg(
                &args.trust_domain,
                args.xds_identity(),
                "--xds-identity",
            )?),
        })
    }

    /// The TLS server name to send and check (only host names are checked by name).
    fn server_name(&self) -> Option<ServerName<'static>> {
        match self {
            Self::HostName(n) => ServerName::try_from(n.clone()).ok(),
            Self::Identity(_) => None,
        }
    }

    fn tls(
        &self,
        bundle: &tls::TrustBundle,
        cert: Option<&amesh_identity::WorkloadCert>,
    ) -> Result<Arc<rustls::ClientConfig>, tls::TlsConfigError> {
        match (self, cert) {
            (Self::HostName(_), cert) => tls::dns_client_config(bundle, cert, tls::provider()),
            (Self::Identity(id), Some(cert)) => {
                tls::client_config(cert, bundle, vec![id.clone()], tls::provider())
            }
            (Self::Identity(id), None) => {
                tls::anonymous_client_config(bundle, vec![id.clone()], tls::provider())
            }
        }
    }
}

/// The certificate manager, the mesh roots, and how to reach the control plane over TLS.
///
/// With `--ca-address` certificates come from Istio's CA protocol and the roots from
/// `--ca-root-file`; ztunnel then authenticates to the control plane with its bearer token
/// only. With the in-process CA (`--ca-dir`) ztunnel also presents a certificate for its own
/// identity (`istio-system/ztunnel`), re-issued per connection.
fn certificates(
    args: &config::Args,
    check: &ControlPlaneCheck,
    credentials: &control::Credentials,
    runtime: &Handle,
) -> anyhow::Result<(Arc<CertManager>, tls::TrustBundle, ControlTls)> {
    let validity = Duration::from_secs(args.cert_validity_secs);
    if let Some(address) = &args.ca_address {
        let root_file = args
            .ca_root_file
            .as_ref()
            .context("--ca-address needs --ca-root-file")?;
        let roots = vec![
            std::fs::read_to_string(root_file)
                .with_context(|| format!("--ca-root-file {}", root_file.display()))?,
        ];
        let bundle = tls::TrustBundle::from_pems(&roots)
            .with_context(|| format!("--ca-root-file {}", root_file.display()))?;
        let control_tls = check.tls(&bundle, None)?;
        if !credentials.has_token() {
            warn!("--ca-address without --token-file: the control plane will refuse ztunnel");
        }
        let connector = control::Connector {
            address: address.clone(),
            tls: control_tls.clone(),
            server_name: check.server_name(),
        };
        let ca = ca_client::IstioCaClient::new(connector, credentials.clone(), roots);
        let certs = CertManager::on_runtime(Arc::new(ca), validity, runtime.clone());
        return Ok((certs, bundle, Box::new(move || Ok(control_tls.clone()))));
    }
    let dir = args
        .ca_dir
        .as_ref()
        .context("either --ca-dir or --ca-address is required")?;
    let ca = Arc::new(LocalCa::load_or_create(dir, &args.trust_domain).context("in-process CA")?);
    let certs = CertManager::on_runtime(ca.clone(), validity, runtime.clone());
    let bundle = tls::TrustBundle::from_pems(&certs.roots())?;
    let own = amesh_identity::Identity::new(&args.trust_domain, "istio-system", "ztunnel");
    let for_tls = bundle.clone();
    let check = check.clone();
    let control_tls = move || {
        let cert = ca.issue(&own, validity).map_err(|e| e.to_string())?;
        check.tls(&for_tls, Some(&cert)).map_err(|e| e.to_string())
    };
    Ok((certs, bundle, Box::new(control_tls)))
}

/// A configuration change re-checks every open inbound connection against the new policies.
fn recheck_on_change(inputs: &Arc<ProxyInputs>) {
    let inputs = inputs.clone();
    let mut changes = inputs.state.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let state = changes.borrow_and_update().clone();
            inputs.live.recheck(&state, &inputs.metrics.policy);
        }
    });
}

/// Binds the admin, readiness and metrics endpoints and serves them, on `control`.
async fn serve_endpoints(
    args: &config::Args,
    endpoints: &Arc<admin::Endpoints>,
    control: &Handle,
) -> anyhow::Result<()> {
    for (addr, role) in [
        (args.admin, admin::Role::Admin),
        (args.readiness, admin::Role::Readiness),
        (args.metrics, admin::Role::Metrics),
    ] {
        let endpoints = endpoints.clone();
        // Bound inside the control runtime, so its reactor owns the socket.
        let bound = control.spawn(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            tokio::spawn(admin::serve(listener, role, endpoints));
            Ok::<_, std::io::Error>(local)
        });
        let local = bound
            .await
            .context("the control runtime stopped")?
            .with_context(|| format!("binding {role:?} endpoint {addr}"))?;
        info!(endpoint = ?role, address = %local, "listening");
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
