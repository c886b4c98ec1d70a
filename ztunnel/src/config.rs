//! Command-line configuration. Every setting Istio's ztunnel takes from its environment is
//! read from the same variable when its flag is absent (`XDS_ADDRESS`, `CA_ADDRESS`,
//! `CA_ROOT_CA`, `AUTH_TOKEN`, `ALT_XDS_HOSTNAME`, `CLUSTER_ID`, `NODE_NAME`, `INPOD_UDS`,
//! `TRUST_DOMAIN`), with Istio's defaults ([`Args::resolve`]), so that Istio's ztunnel
//! DaemonSet environment configures this binary too.

use clap::Parser;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// Where Istio mounts the mesh root for ztunnel.
pub const ISTIO_ROOT_CERT: &str = "/var/run/secrets/istio/root-cert.pem";
/// Where Istio mounts ztunnel's projected service-account token.
pub const ISTIO_TOKEN: &str = "/var/run/secrets/tokens/istio-token";
/// The control plane's identity when nothing else says how to verify it.
pub const DEFAULT_XDS_IDENTITY: &str = "istio-system/istiod";

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
    /// The control plane's xDS address, `host:port` or Istio's `https://host:port` (delta
    /// ADS over TLS); instead of `--config`. With `https://`, the control plane is verified
    /// by that host name (as Istio's ztunnel does) unless `--control-plane-dns-name` or
    /// `--xds-identity` says otherwise.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Verify the control plane's certificate by this host name instead of its SPIFFE
    /// identity (for istiod: `istiod.istio-system.svc`).
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub control_plane_dns_name: Option<String>,
    /// `<namespace>/<service account>` the control plane's certificate must name (default
    /// `istio-system/istiod`).
    #[arg(long)]
    pub xds_identity: Option<String>,
    /// Sent to the control plane as the `clusterid` header and node metadata.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// This node's name (service endpoints on it are preferred when a service asks).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// The node agent's ZDS socket.
    #[arg(
        long,
        env = "INPOD_UDS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub zds_socket: PathBuf,
    /// Where the capture programs' maps are pinned.
    #[arg(long, default_value = amesh_ebpf_loader::DEFAULT_PIN_ROOT)]
    pub capture_pins: PathBuf,
    /// Who redirects the pods' traffic here: amesh's eBPF programs (the node agent pins
    /// their maps), or istio-cni's in-pod iptables rules (Istio's node agent drives ZDS; the
    /// original destination comes from `SO_ORIGINAL_DST`).
    #[arg(long, env = "AMESH_CAPTURE", value_enum, default_value = "ebpf")]
    pub capture: CaptureMode,
    /// Directory of the in-process CA's root (created if missing; share it between ztunnels
    /// that must trust each other).
    #[arg(long, required_unless_present_any = ["ca_address", "xds_address"])]
    pub ca_dir: Option<PathBuf>,
    /// Istio's CA (`CreateCertificate`), `host:port` or `https://host:port` (e.g. the
    /// control plane's port 15012), instead of the in-process one; without `--ca-dir` it is
    /// the xDS address, as in Istio.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// PEM root(s) of the mesh: verifies the control plane and peers when the CA is remote
    /// (default: Istio's mount, `/var/run/secrets/istio/root-cert.pem`, when it exists).
    #[arg(long, env = "CA_ROOT_CA")]
    pub ca_root_file: Option<PathBuf>,
    /// Bearer token sent to the control plane (xDS and CA) (default: Istio's projected
    /// token, `/var/run/secrets/tokens/istio-token`, when it exists).
    #[arg(long, env = "AUTH_TOKEN")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "TRUST_DOMAIN", default_value = amesh_identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// This node's network, as Istio's `NETWORK` (empty: the default one). Workloads on
    /// other networks are refused: they need a network gateway.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
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
    /// The resolv.conf whose `nameserver`s the pods' DNS proxy forwards to (names the mesh
    /// does not answer); as Istio's ztunnel, its own.
    #[arg(
        long,
        env = "AMESH_DNS_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    pub dns_resolv_conf: PathBuf,
    /// The cluster's DNS domain, for the pods' short names (`web` is
    /// `web.<namespace>.svc.<domain>`).
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Istio's mesh-wide `outboundTrafficPolicy.mode`: `ALLOW_ANY` lets enrolled pods reach
    /// any address (plain TCP outside the mesh); `REGISTRY_ONLY` refuses destinations that
    /// are neither mesh workloads nor services the control plane sent (ServiceEntries
    /// included).
    #[arg(
        long,
        env = "OUTBOUND_TRAFFIC_POLICY",
        value_enum,
        default_value = "ALLOW_ANY"
    )]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Istio's `MeshConfig.OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    AllowAny,
    RegistryOnly,
}

/// An address as Istio writes it (`https://host:port`) or as amesh does (`host:port`):
/// `host:port`, and the host when it came as a URL.
fn split_url(address: &str) -> (String, Option<String>) {
    let Some(rest) = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
    else {
        return (address.to_string(), None);
    };
    let authority = rest.trim_end_matches('/').to_string();
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority.as_str(),
    };
    let host = host.to_string();
    (authority, Some(host))
}

impl Args {
    /// Applies Istio's defaults where a setting was left out: addresses given as URLs,
    /// the control plane verified by the URL's host name, the CA at the xDS address, the
    /// root and the token at Istio's mount points when they exist.
    pub fn resolve(self) -> Self {
        self.resolve_with(|p| p.exists())
    }

    fn resolve_with(mut self, exists: impl Fn(&Path) -> bool) -> Self {
        if let Some(address) = self.xds_address.take() {
            let (address, host) = split_url(&address);
            if self.control_plane_dns_name.is_none() && self.xds_identity.is_none() {
                self.control_plane_dns_name = host;
            }
            self.xds_address = Some(address);
        }
        self.ca_address = self.ca_address.take().map(|a| split_url(&a).0);
        if self.ca_address.is_none() && self.ca_dir.is_none() {
            self.ca_address = self.xds_address.clone();
        }
        let mounted = |path: &str| Some(PathBuf::from(path)).filter(|p| exists(p));
        if self.ca_address.is_some() && self.ca_root_file.is_none() {
            self.ca_root_file = mounted(ISTIO_ROOT_CERT);
        }
        if self.token_file.is_none() {
            self.token_file = mounted(ISTIO_TOKEN);
        }
        self
    }

    /// `<namespace>/<service account>` of the control plane.
    pub fn xds_identity(&self) -> &str {
        self.xds_identity.as_deref().unwrap_or(DEFAULT_XDS_IDENTITY)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], mounted: &[&str]) -> Args {
        let mut all = vec!["ztunnel"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)
            .unwrap()
            .resolve_with(|p| mounted.iter().any(|m| Path::new(m) == p))
    }

    /// Istio's ztunnel DaemonSet gives only the istiod URL and mounts root and token.
    #[test]
    fn istio_style_settings_get_istios_defaults() {
        let a = parse(
            &["--xds-address", "https://istiod.istio-system.svc:15012"],
            &[ISTIO_ROOT_CERT, ISTIO_TOKEN],
        );
        assert_eq!(
            a.xds_address.as_deref(),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(a.ca_address, a.xds_address, "the CA is the xDS address");
        assert_eq!(
            a.control_plane_dns_name.as_deref(),
            Some("istiod.istio-system.svc"),
            "verified by the URL's host name"
        );
        assert_eq!(a.ca_root_file.as_deref(), Some(Path::new(ISTIO_ROOT_CERT)));
        assert_eq!(a.token_file.as_deref(), Some(Path::new(ISTIO_TOKEN)));
        let alt = parse(
            &[
                "--xds-address",
                "https://10.96.0.5:15012",
                "--control-plane-dns-name",
                "istiod.istio-system.svc",
                "--ca-address",
                "https://[fd00::5]:15012/",
            ],
            &[],
        );
        assert_eq!(
            alt.control_plane_dns_name.as_deref(),
            Some("istiod.istio-system.svc"),
            "ALT_XDS_HOSTNAME wins over the URL's host"
        );
        assert_eq!(alt.ca_address.as_deref(), Some("[fd00::5]:15012"));
        assert_eq!(
            (alt.ca_root_file, alt.token_file),
            (None, None),
            "nothing mounted"
        );
    }

    /// amesh's own flags keep their meaning: host:port, SPIFFE verification, an in-process
    /// CA when asked for.
    #[test]
    fn amesh_style_settings_are_unchanged() {
        let a = parse(
            &["--xds-address", "127.0.0.1:15012", "--ca-dir", "/tmp/ca"],
            &[ISTIO_ROOT_CERT],
        );
        assert_eq!(a.xds_address.as_deref(), Some("127.0.0.1:15012"));
        assert_eq!(a.control_plane_dns_name, None);
        assert_eq!(a.xds_identity(), DEFAULT_XDS_IDENTITY);
        assert_eq!(a.ca_address, None, "the in-process CA");
        assert_eq!(a.ca_root_file, None);
        let by_identity = parse(
            &[
                "--xds-address",
                "https://cp:15012",
                "--xds-identity",
                "amesh/cp",
            ],
            &[],
        );
        assert_eq!(
            by_identity.control_plane_dns_name, None,
            "SPIFFE identity asked for"
        );
        assert!(
            Args::try_parse_from(["ztunnel"]).is_err(),
            "a source is required"
        );
    }
}

/// How pods' traffic reaches ztunnel's in-pod listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// amesh's cgroup and sk_lookup programs (`cargo xtask build-ebpf`, the amesh node agent).
    Ebpf,
    /// istio-cni's in-pod REDIRECT rules: outbound to 15001, inbound plaintext to 15006,
    /// ztunnel's own sockets exempt by the 0x539 mark.
    Iptables,
}
