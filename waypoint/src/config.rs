//! The waypoint's command line (each flag also from the environment a Deployment sets).

use std::{net::SocketAddr, path::PathBuf};

/// Where Istio mounts the mesh root and the projected token in a proxy's pod.
pub const ISTIO_ROOT_CERT: &str = "/var/run/secrets/istio/root-cert.pem";
pub const ISTIO_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "amesh-waypoint",
    about = "amesh's waypoint: the L7 proxy for the services and workloads bound to it"
)]
pub struct Args {
    /// The waypoint's Gateway (its Service has the same name).
    #[arg(long, env = "GATEWAY_NAME")]
    pub name: String,
    /// The Gateway's namespace (where the waypoint runs).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The service account it runs as (default: the Gateway's name, as Istio creates it).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "DOMAIN_SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The control plane (xDS), `host:port`.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: String,
    /// Istio's CA, `host:port` (default: the xDS address).
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// `<namespace>/<service account>` the control plane's certificate must name.
    #[arg(long, default_value = "istio-system/istiod")]
    pub xds_identity: String,
    /// Verify the control plane's certificate by this host name instead of its SPIFFE
    /// identity (`istiod.istio-system.svc`, as Istio's proxies check istiod).
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub control_plane_dns_name: Option<String>,
    /// PEM root(s) of the mesh (default: Istio's mount).
    #[arg(long, default_value = ISTIO_ROOT_CERT)]
    pub ca_root_file: PathBuf,
    /// Bearer token for the control plane (default: Istio's projected token).
    #[arg(long, default_value = ISTIO_TOKEN)]
    pub token_file: PathBuf,
    /// HBONE, mutual TLS.
    #[arg(long, default_value = "[::]:15008")]
    pub listen: SocketAddr,
    /// Readiness (`/healthz/ready`), as Istio's proxies serve it.
    #[arg(long, default_value = "[::]:15021")]
    pub readiness: SocketAddr,
    /// Prometheus metrics (`/metrics`, `/stats/prometheus`).
    #[arg(long, default_value = "[::]:15020")]
    pub metrics: SocketAddr,
    /// Admin (`/config_dump`), loopback only by default.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Make the data-path sockets (the HBONE listener, connections to endpoints) inside this
    /// network namespace (a path such as `/var/run/netns/<pod>`); default: the process's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Certificate lifetime asked of the CA, seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_validity_secs: u64,
}

impl Args {
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }

    /// The waypoint Service's host name, as bindings name it.
    pub fn hostname(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name, self.namespace, self.domain_suffix
        )
    }
}
