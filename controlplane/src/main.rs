//! The `amesh-controlplane` binary: serves the local source directory to ztunnels over delta
//! ADS on one mutual-TLS port. The CA service and the Kubernetes source are not built yet.
#![forbid(unsafe_code)]

use amesh_controlplane::{ads::Ads, serve, translate::Mesh, watch};
use amesh_identity::{Identity, LocalCa, tls};
use amesh_proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use anyhow::Context;
use clap::Parser;
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "amesh-controlplane", about = "amesh's control plane (xDS)")]
struct Args {
    /// Directory of Kubernetes YAML (Namespaces, Pods with spec.nodeName and status.podIPs,
    /// Services, AuthorizationPolicies, PeerAuthentications); watched for changes.
    #[arg(long)]
    source_dir: PathBuf,
    /// The xDS port (Istio's is 15012).
    #[arg(long, default_value = "[::]:15012")]
    listen: SocketAddr,
    /// Directory of the mesh CA's root (created if missing). Clients must present a
    /// certificate it signed; the control plane's own serving certificate comes from it.
    #[arg(long)]
    ca_dir: PathBuf,
    #[arg(long, default_value = amesh_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The cluster name in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Namespace and service account the control plane's certificate names (clients are
    /// told to expect this identity).
    #[arg(long, default_value = "istio-system/istiod")]
    identity: String,
}

/// Lifetime of the serving certificate. It is not renewed while running yet: a restart
/// re-issues it.
const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (ns, sa) = args
        .identity
        .split_once('/')
        .context("--identity: expected <namespace>/<service account>")?;
    let ca = LocalCa::load_or_create(&args.ca_dir, &args.trust_domain).context("--ca-dir")?;
    let identity = Identity::new(&args.trust_domain, ns, sa);
    let cert = ca
        .issue(&identity, SERVING_CERT_VALIDITY)
        .context("issuing the serving certificate")?;
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()])?;
    let tls = tls::server_config(&cert, &bundle, tls::provider())?;
    let mesh = Mesh {
        cluster_id: args.cluster_id.clone(),
        trust_domain: args.trust_domain.clone(),
        ..Mesh::default()
    };
    let catalog = watch::publish_dir(args.source_dir.clone(), mesh)
        .with_context(|| format!("--source-dir {}", args.source_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    info!(listen = %listener.local_addr()?, identity = %identity.principal(), "serving xDS");
    let service = AggregatedDiscoveryServiceServer::new(Ads::new(catalog));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .serve_with_incoming(service, serve::incoming(listener, tls))
        .await?;
    Ok(())
}
