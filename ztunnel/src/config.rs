//! Command-line configuration.

use clap::Parser;
use std::{net::SocketAddr, path::PathBuf};

#[derive(Debug, Clone, Parser)]
#[command(name = "ztunnel", about = "amesh's per-node L4 proxy")]
pub struct Args {
    /// Local file of workloads and services (the shape of Istio's workload API); reloaded on
    /// change.
    #[arg(
        long,
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    pub config: Option<PathBuf>,
    /// The control plane's xDS address, `host:port` (delta ADS over TLS); instead of
    /// `--config`.
    #[arg(long)]
    pub xds_address: Option<String>,
    /// Verify the control plane's certificate by this host name instead of its SPIFFE
    /// identity (for istiod: `istiod.istio-system.svc`).
    #[arg(long)]
    pub control_plane_dns_name: Option<String>,
    /// `<namespace>/<service account>` the control plane's certificate must name.
    #[arg(long, default_value = "istio-system/istiod")]
    pub xds_identity: String,
    /// Sent to the control plane as the `clusterid` header and node metadata.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// This node's name (service endpoints on it are preferred when a service asks).
    #[arg(long, default_value = "")]
    pub node: String,
    /// The node agent's ZDS socket.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    /// Where the capture programs' maps are pinned.
    #[arg(long, default_value = amesh_ebpf_loader::DEFAULT_PIN_ROOT)]
    pub capture_pins: PathBuf,
    /// Directory of the in-process CA's root (created if missing; share it between ztunnels
    /// that must trust each other).
    #[arg(long, required_unless_present = "ca_address")]
    pub ca_dir: Option<PathBuf>,
    /// Istio's CA (`CreateCertificate`), `host:port` (e.g. the control plane's port 15012),
    /// instead of the in-process one.
    #[arg(long, requires = "ca_root_file")]
    pub ca_address: Option<String>,
    /// PEM root(s) of the mesh: verifies the control plane and peers when the CA is remote.
    #[arg(long)]
    pub ca_root_file: Option<PathBuf>,
    /// Bearer token sent to the control plane (xDS and CA).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value = amesh_identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of workload certificates, in seconds (renewed at half life).
    #[arg(long, default_value_t = 86400)]
    pub cert_validity_secs: u64,
    /// Admin endpoint (config dump, log level, quit); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Prometheus metrics.
    #[arg(long, default_value = "[::]:15020")]
    pub metrics: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness: SocketAddr,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// On SIGTERM, how long open connections may finish before ztunnel exits.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
    /// Inbound HBONE TLS handshakes that may be in progress at once, node-wide (anyone who
    /// can reach port 15008 can start one); connections over it are closed at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hbone_handshakes: u32,
}

/// Logs to stderr as text or JSON, level from `RUST_LOG` (default `info`); the returned
/// control changes the level at run time (the admin endpoint's `/logging`).
pub fn init_logging(args: &Args) -> crate::logging::LogControl {
    use tracing_subscriber::{
        EnvFilter, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let initial = filter.to_string();
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if args.log_format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init();
    }
    crate::logging::LogControl::new(handle, initial)
}
