//! The `amesh-controlplane` binary: serves the cluster (or a directory of its YAML) to
//! ztunnels over delta ADS, and Istio's CA protocol, on one TLS port.
#![forbid(unsafe_code)]

use amesh_controlplane::{
    ads::Ads, auth::Authenticator, ca::CaService, ca_secret, catalog::Catalog, kube_source,
    root_configmap, serve, serving_cert::ServingCert, translate::Mesh, watch,
};
use amesh_identity::{Identity, LocalCa, tls};
use amesh_proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
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
    /// In Kubernetes mode, be the controller of waypoint Gateways (class istio-waypoint or
    /// amesh-waypoint), deploying this `amesh-waypoint` image for each.
    #[arg(long, env = "WAYPOINT_IMAGE")]
    waypoint_image: Option<String>,
    /// Where the waypoints it deploys reach the control plane.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    waypoint_xds_address: String,
    /// The xDS port (Istio's is 15012).
    #[arg(long, default_value = "[::]:15012")]
    listen: SocketAddr,
    /// Directory of the mesh CA's root (`root-cert.pem`, `root-key.pem`; generated if
    /// missing). Client certificates must chain to it; the serving certificate comes from it.
    #[arg(
        long,
        required_unless_present = "ca_secret",
        conflicts_with = "ca_secret"
    )]
    ca_dir: Option<PathBuf>,
    /// Keep the CA root in this Kubernetes Secret instead, `<namespace>/<name>` (istiod's
    /// is `istio-system/istio-ca-secret`): loaded, or generated and stored.
    #[arg(long)]
    ca_secret: Option<String>,
    #[arg(long, default_value = amesh_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The cluster name in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Namespace and service account the control plane's certificate names (clients are
    /// told to expect this identity).
    #[arg(long, default_value = "istio-system/istiod")]
    identity: String,
    /// Service accounts (`<namespace>/<name>`, comma-separated or repeated) trusted to ask
    /// the CA for their node's workloads' certificates: the ztunnel DaemonSet's. Istio's
    /// `CA_TRUSTED_NODE_ACCOUNTS`, with its default.
    #[arg(
        long = "trusted-node-account",
        env = "CA_TRUSTED_NODE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "istio-system/ztunnel"
    )]
    trusted_node_accounts: Vec<String>,
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
    /// TLS handshakes in progress at once; connections past that are closed at once.
    #[arg(long, default_value_t = serve::DEFAULT_MAX_HANDSHAKES, value_parser = clap::value_parser!(usize))]
    max_handshakes: usize,
    /// The CA bundle (PEM) that HTTPS servers of RequestAuthentication `jwksUri`s are
    /// verified with.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    jwks_ca_file: PathBuf,
    /// Istio's mesh configuration (YAML, what the `istio` ConfigMap's `mesh` key holds):
    /// its `extensionProviders` serve CUSTOM AuthorizationPolicies. Default: Istio's mount,
    /// `/etc/istio/config/mesh`, when it exists.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
}

/// Reads the mesh configuration: the file given, else Istio's mount if there is one.
fn mesh_config(
    path: Option<&std::path::Path>,
) -> anyhow::Result<amesh_policy::ext_authz::MeshConfig> {
    let default = std::path::Path::new("/etc/istio/config/mesh");
    let path = match path {
        Some(p) => p,
        None if default.is_file() => default,
        None => return Ok(Default::default()),
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--mesh-config {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("--mesh-config {}", path.display()))
}

/// Lifetime of the serving certificate (renewed at half life while serving).
const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The Kubernetes client, unless the source is a directory.
async fn kube_client(args: &Args) -> anyhow::Result<Option<kube::Client>> {
    let config = match (&args.kube_url, args.kubernetes) {
        (Some(url), _) => kube::Config::new(
            url.parse()
                .with_context(|| format!("--kube-url {url}: not a URL"))?,
        ),
        (None, true) => kube::Config::infer()
            .await
            .context("--kubernetes: no in-cluster config or kubeconfig")?,
        (None, false) => return Ok(None),
    };
    Ok(Some(
        kube::Client::try_from(config).context("Kubernetes client")?,
    ))
}

/// `--trusted-node-account`s as identities.
fn node_accounts(args: &Args) -> anyhow::Result<Vec<Identity>> {
    args.trusted_node_accounts
        .iter()
        .map(|a| {
            let (ns, sa) = a
                .trim()
                .split_once('/')
                .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
                .with_context(|| {
                    format!("--trusted-node-account {a:?}: expected <namespace>/<service account>")
                })?;
            Ok(Identity::new(&args.trust_domain, ns, sa))
        })
        .collect()
}

/// The CA root: from `--ca-secret` (Kubernetes) or `--ca-dir`.
async fn load_ca(args: &Args, kube: Option<&kube::Client>) -> anyhow::Result<LocalCa> {
    match (&args.ca_secret, &args.ca_dir) {
        (Some(secret), _) => {
            let (ns, name) = secret
                .split_once('/')
                .context("--ca-secret: expected <namespace>/<name>")?;
            let client = kube.context("--ca-secret needs --kubernetes or --kube-url")?;
            Ok(ca_secret::load_or_create(client.clone(), ns, name, &args.trust_domain).await?)
        }
        (None, Some(dir)) => {
            Ok(LocalCa::load_or_create(dir, &args.trust_domain).context("--ca-dir")?)
        }
        (None, None) => anyhow::bail!("either --ca-dir or --ca-secret is required"),
    }
}

/// A small file named by a flag: only a regular file (a FIFO would hang start-up with no
/// word), UTF-8, at most 1 MiB.
fn read_flag_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = amesh_sys::file::read_regular(path, 1 << 20).with_context(|| flag.to_string())?;
    String::from_utf8(bytes).with_context(|| format!("{flag} {}: not UTF-8", path.display()))
}

/// The TLS server config: the renewing serving certificate, the mesh root plus any extra
/// roots for client certificates.
fn server_tls(
    args: &Args,
    ca: &Arc<LocalCa>,
    identity: &Identity,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    let serving = ServingCert::start(
        ca.clone(),
        identity.clone(),
        args.dns_names.clone(),
        SERVING_CERT_VALIDITY,
        tls::provider(),
    )?;
    let mut roots = vec![ca.root_pem().to_string()];
    for f in &args.extra_root_file {
        roots.push(read_flag_file("--extra-root-file", f)?);
    }
    let bundle = tls::TrustBundle::from_pems(&roots).context("trust bundle")?;
    Ok(tls::server_config_client_cert_optional(
        serving,
        &args.trust_domain,
        &bundle,
        tls::provider(),
    )?)
}

/// The published catalog, from the cluster or the directory.
async fn source(
    args: &Args,
    kube: Option<kube::Client>,
) -> anyhow::Result<tokio::sync::watch::Receiver<Arc<Catalog>>> {
    // Without a usable bundle only http:// JWKS can be fetched; said once, not fatal (an
    // L4-only mesh has no RequestAuthentication).
    let jwks = amesh_controlplane::jwks::Jwks::new(&args.jwks_ca_file).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "JWKS over HTTPS cannot be verified; https jwksUri rules will refuse their tokens");
        amesh_controlplane::jwks::Jwks::default()
    });
    let mesh = Mesh {
        cluster_id: args.cluster_id.clone(),
        trust_domain: args.trust_domain.clone(),
        jwks,
        mesh_config: Arc::new(mesh_config(args.mesh_config.as_deref())?),
        ..Mesh::default()
    };
    match (kube, &args.source_dir) {
        (Some(client), _) => {
            info!("waiting for the first list of every watched kind");
            let waypoints = args.waypoint_image.clone().map(|image| {
                amesh_controlplane::waypoint_controller::Settings {
                    image,
                    xds_address: args.waypoint_xds_address.clone(),
                    control_plane_dns_name: args
                        .dns_names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "istiod.istio-system.svc".into()),
                    cluster_id: mesh.cluster_id.clone(),
                    trust_domain: mesh.trust_domain.clone(),
                    domain_suffix: mesh.domain_suffix.clone(),
                }
            });
            Ok(kube_source::publish_kube(client, mesh, waypoints).await?)
        }
        (None, Some(dir)) => Ok(watch::publish_dir(dir.clone(), mesh)
            .await
            .with_context(|| format!("--source-dir {}", dir.display()))?),
        (None, None) => anyhow::bail!("one of --source-dir, --kubernetes, --kube-url is required"),
    }
}

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
    let identity = Identity::new(&args.trust_domain, ns, sa);
    let kube = kube_client(&args).await?;
    let ca = Arc::new(load_ca(&args, kube.as_ref()).await?);
    let tls = server_tls(&args, &ca, &identity)?;
    let node_token = match &args.node_token_file {
        Some(f) => Some(read_flag_file("--node-token-file", f)?),
        None => None,
    };
    let mut auth = Authenticator::new(node_token, &args.trust_domain);
    if let Some(client) = &kube {
        auth = auth.with_token_review(client.clone());
        // ztunnel's DaemonSet mounts the roots from this ConfigMap in our namespace.
        let mut roots = ca.root_pem().to_string();
        for f in &args.extra_root_file {
            roots.push_str(&read_flag_file("--extra-root-file", f)?);
        }
        root_configmap::publish(client.clone(), ns, &roots)
            .await
            .context("publishing the istio-ca-root-cert ConfigMap")?;
    }
    let catalog = source(&args, kube).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    info!(listen = %listener.local_addr()?, identity = %identity.principal(), "serving xDS");
    let ca = CaService {
        ca,
        catalog: catalog.clone(),
        auth: auth.clone(),
        trust_domain: args.trust_domain.clone(),
        node_accounts: node_accounts(&args)?,
        max_validity: Duration::from_secs(args.cert_validity_secs),
    };
    let routes = serve::Routes {
        ads: Ads::new(catalog, auth).into_server(),
        ca: IstioCertificateServiceServer::new(ca),
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .serve_with_incoming(
            routes,
            serve::incoming(listener, tls, args.max_handshakes.max(1)),
        )
        .await?;
    Ok(())
}
