//! The `amesh-controlplane` binary: serves the local source directory to ztunnels over delta
//! ADS, and Istio's CA protocol, on one TLS port. The Kubernetes source is not built yet.
#![forbid(unsafe_code)]

use amesh_controlplane::{
    ads::Ads, auth::Authenticator, ca::CaService, kube_source, serve, serving_cert::ServingCert,
    translate::Mesh, watch,
};
use amesh_identity::{Identity, LocalCa, tls};
use amesh_proto::{
    ca::istio_certificate_service_server::IstioCertificateServiceServer,
    discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use anyhow::Context;
use clap::Parser;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "amesh-controlplane", about = "amesh's control plane (xDS)")]
struct Args {
    /// Directory of Kubernetes YAML (Namespaces, Pods with spec.nodeName and status.podIPs,
    /// Services, AuthorizationPolicies, PeerAuthentications); watched for changes.
    #[arg(long, required_unless_present_any = ["kubernetes", "kube_url"], conflicts_with_all = ["kubernetes", "kube_url"])]
    source_dir: Option<PathBuf>,
    /// Watch the Kubernetes cluster (in-cluster service account, or the kubeconfig) instead
    /// of a directory.
    #[arg(long, conflicts_with = "kube_url")]
    kubernetes: bool,
    /// Watch the API server at this URL without credentials (`kubectl proxy`, tests).
    #[arg(long)]
    kube_url: Option<String>,
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
    /// A file holding the node token: node agents presenting it as a bearer token may use
    /// xDS and ask the CA for their workloads' certificates (the local stand-in for
    /// Kubernetes service-account tokens).
    #[arg(long)]
    node_token_file: Option<PathBuf>,
    /// DNS names in the serving certificate, for clients that verify the control plane by
    /// host name (Istio's ztunnel checks `istiod.istio-system.svc`).
    #[arg(long = "dns-name", default_value = "istiod.istio-system.svc")]
    dns_names: Vec<String>,
    /// More roots (PEM) whose certificates clients may present, for root rotation: the
    /// previous root, while certificates it signed are still in use.
    #[arg(long)]
    extra_root_file: Vec<PathBuf>,
    /// The longest workload certificate the CA signs, in seconds (and the default).
    #[arg(long, default_value_t = 86400)]
    cert_validity_secs: u64,
}

/// Lifetime of the serving certificate (renewed at half life while serving).
const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

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
    let ca = Arc::new(ca);
    let serving = ServingCert::start(
        ca.clone(),
        identity.clone(),
        args.dns_names.clone(),
        SERVING_CERT_VALIDITY,
        tls::provider(),
    )?;
    let mut roots = vec![ca.root_pem().to_string()];
    for f in &args.extra_root_file {
        roots.push(
            std::fs::read_to_string(f)
                .with_context(|| format!("--extra-root-file {}", f.display()))?,
        );
    }
    let bundle = tls::TrustBundle::from_pems(&roots).context("trust bundle")?;
    let tls = tls::server_config_client_cert_optional(
        serving,
        &args.trust_domain,
        &bundle,
        tls::provider(),
    )?;
    let node_token = match &args.node_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--node-token-file {}", f.display()))?,
        ),
        None => None,
    };
    let mut auth = Authenticator::new(node_token, &args.trust_domain);
    let mesh = Mesh {
        cluster_id: args.cluster_id.clone(),
        trust_domain: args.trust_domain.clone(),
        ..Mesh::default()
    };
    let catalog = match (&args.source_dir, &args.kube_url) {
        (Some(dir), _) => watch::publish_dir(dir.clone(), mesh)
            .with_context(|| format!("--source-dir {}", dir.display()))?,
        (None, url) => {
            let config = match url {
                Some(url) => kube::Config::new(
                    url.parse()
                        .with_context(|| format!("--kube-url {url}: not a URL"))?,
                ),
                None => kube::Config::infer()
                    .await
                    .context("--kubernetes: no in-cluster config or kubeconfig")?,
            };
            let client = kube::Client::try_from(config).context("Kubernetes client")?;
            auth = auth.with_token_review(client.clone());
            info!("waiting for the first list of every watched kind");
            kube_source::publish_kube(client, mesh).await?
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    info!(listen = %listener.local_addr()?, identity = %identity.principal(), "serving xDS");
    let ca = CaService {
        ca,
        catalog: catalog.clone(),
        auth: auth.clone(),
        trust_domain: args.trust_domain.clone(),
        node_accounts: vec![Identity::new(&args.trust_domain, "istio-system", "ztunnel")],
        max_validity: Duration::from_secs(args.cert_validity_secs),
    };
    let routes = serve::Routes {
        ads: AggregatedDiscoveryServiceServer::new(Ads::new(catalog, auth)),
        ca: IstioCertificateServiceServer::new(ca),
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .serve_with_incoming(routes, serve::incoming(listener, tls))
        .await?;
    Ok(())
}
