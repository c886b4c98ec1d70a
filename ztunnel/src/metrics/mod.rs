//! Prometheus metrics with Istio's names and labels, so existing dashboards and alerts work:
//! `istio_tcp_connections_opened_total`, `..._closed_total`, `..._failed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`, `istio_tcp_sockets_open`,
//! `istio_build{component,tag}`, the workload manager's `istio_active_proxy_count`,
//! `istio_pending_proxy_count`, `istio_proxies_started_total`, `istio_proxies_stopped_total`,
//! plus amesh's own
//! `amesh_hbone_tls_handshakes_total` (how well the HBONE pool reuses connections), and the
//! xDS client's `istio_xds_connection_terminations_total`, `istio_xds_message_total` and
//! `istio_xds_message_bytes_total`.
//!
//! Istio has no names for how ztunnel holds up under hostile or excessive load, so these
//! are amesh's: `amesh_accept_errors_total{listener}` (accept() failures, e.g. at the
//! file-descriptor limit), `amesh_connections_refused_total{listener,reason}` (connections
//! closed before any policy decision: `ztunnel_port` for traffic aimed at ztunnel's own
//! ports, `handshake_limit` for HBONE handshakes over the cap, `certificate_not_ready`) and
//! `amesh_hbone_handshakes_in_progress` (inbound TLS handshakes under way).
//!
//! Each subsystem has its own struct, handed only to it: [`TcpMetrics`] to the per-connection
//! record, [`HboneMetrics`] to the tunnels, [`PolicyMetrics`] to authorization,
//! [`ListenerMetrics`] to the accept loops and early refusals, [`XdsMetrics`] to the xDS
//! client. [`Metrics::register`] creates them all into one registry.

mod labels;

pub use labels::{Listener, PolicyAction, RefuseReason, Reporter, ResponseFlag, SecurityPolicy};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Istio's TCP metric labels. Unknown values are "unknown", as Istio reports them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: ResponseFlag,
    pub connection_security_policy: SecurityPolicy,
    /// Present once either side's workload is known, as in Istio's.
    #[prometheus(flatten)]
    pub locality: OptionalLocality,
}

/// Istio's locality labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalityLabels {
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

impl Default for LocalityLabels {
    fn default() -> Self {
        Self {
            source_region: UNKNOWN.into(),
            source_zone: UNKNOWN.into(),
            destination_region: UNKNOWN.into(),
            destination_zone: UNKNOWN.into(),
        }
    }
}

/// Locality labels that are left out entirely while neither side's workload is known: Istio's
/// ztunnel adds them only then, so a series for an unknown peer has the same label set there
/// and here.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct OptionalLocality(pub Option<LocalityLabels>);

impl OptionalLocality {
    /// The labels, created ("unknown" on both sides) on first use.
    pub fn get(&mut self) -> &mut LocalityLabels {
        self.0.get_or_insert_with(LocalityLabels::default)
    }
}

impl EncodeLabelSet for OptionalLocality {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(l) => l.encode(encoder),
            None => Ok(()),
        }
    }
}

/// `value`, or "unknown" when empty (Istio's `DefaultedUnknown`).
pub fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_string()
    } else {
        value.to_string()
    }
}

pub const UNKNOWN: &str = "unknown";

impl TcpLabels {
    pub fn new(reporter: Reporter) -> Self {
        let u = || UNKNOWN.to_string();
        Self {
            reporter,
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "tcp",
            response_flags: ResponseFlag::None,
            connection_security_policy: SecurityPolicy::Unknown,
            locality: OptionalLocality::default(),
        }
    }
}

/// Istio's per-connection TCP metrics.
#[derive(Debug, Default, Clone)]
pub struct TcpMetrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub failed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
}

/// HBONE tunnels: handshakes the pool made, inbound handshakes under way.
#[derive(Debug, Default, Clone)]
pub struct HboneMetrics {
    pub handshakes: Counter,
    pub handshakes_in_progress: Gauge,
}

/// Authorization: what dry-run policies would have done.
#[derive(Debug, Default, Clone)]
pub struct PolicyMetrics {
    pub dry_run_hits: Family<DryRunLabels, Counter>,
}

/// Labels of the dry-run counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabels {
    /// `namespace/name`.
    pub policy: String,
    pub action: PolicyAction,
}

/// The listeners: accept errors, connections closed before any policy decision, and the
/// sockets the pods' listeners hold open.
#[derive(Debug, Default, Clone)]
pub struct ListenerMetrics {
    pub accept_errors: Family<ListenerLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub sockets_open: Family<SocketLabels, Gauge>,
}

/// `istio_build`: which component, at which version (amesh's own: it has no Istio version).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub component: &'static str,
    pub tag: &'static str,
}

/// Istio's `istio_tcp_sockets_open` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabels {
    pub reporter: Reporter,
}

/// One accepted socket in `istio_tcp_sockets_open`, until dropped.
#[derive(Debug)]
pub struct OpenSocket(Gauge);

impl OpenSocket {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: Listener,
    pub reason: RefuseReason,
}

impl ListenerMetrics {
    /// The gauge of the sockets open for `reporter`'s side (fetched once per listener, not
    /// per connection).
    pub fn sockets(&self, reporter: Reporter) -> Gauge {
        self.sockets_open
            .get_or_create(&SocketLabels { reporter })
            .clone()
    }

    /// Counts a connection refused on `listener` for `reason`.
    pub fn refuse(&self, listener: Listener, reason: RefuseReason) {
        self.refused
            .get_or_create(&RefusedLabels { listener, reason })
            .inc();
    }
}

/// Istio's workload-manager metrics: the pods ztunnel proxies for.
#[derive(Debug, Default, Clone)]
pub struct WorkloadMetrics {
    /// Pods proxied now.
    pub active: Gauge,
    /// Pods received but not yet proxied. A pod's proxy starts while its ZDS add is handled
    /// (or the add is refused), so this stays 0; registered because Istio's dashboards read it.
    pub pending: Gauge,
    pub started: Counter,
    pub stopped: Counter,
}

/// Istio ztunnel's DNS proxy metrics (`istio_dns_*`).
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    /// Queries the proxy received.
    pub requests: Family<DnsLabels, Counter>,
    /// Queries it sent on to an upstream resolver.
    pub upstream_requests: Family<DnsLabels, Counter>,
    /// Forwarded queries no upstream answered.
    pub upstream_failures: Family<DnsLabels, Counter>,
    /// How long the upstream took, in seconds (Istio's buckets).
    pub upstream_duration: Family<DnsLabels, prometheus_client::metrics::histogram::Histogram>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new([
                    0.0005, 0.001, 0.01, 0.1, 1.0, 5.0,
                ])
            }),
        }
    }
}

/// Istio's DNS labels: the query's type and transport, and the asking pod.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// Lower case: `a`, `aaaa`, `txt`...
    pub request_query_type: String,
    /// `udp` or `tcp`.
    pub request_protocol: &'static str,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

/// Istio's xDS client metrics.
#[derive(Debug, Default, Clone)]
pub struct XdsMetrics {
    /// Why streams to the control plane ended.
    pub terminations: Family<XdsTerminationLabels, Counter>,
    /// Responses received, by type URL.
    pub messages: Family<XdsUrlLabels, Counter>,
    /// Bytes of responses received, by type URL.
    pub message_bytes: Family<XdsUrlLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsTerminationLabels {
    /// `ConnectionError` (could not connect), `Error` (the stream failed), `Complete` (the
    /// control plane closed it), as Istio's ztunnel reports them.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsUrlLabels {
    pub url: String,
}

/// Every subsystem's metrics, registered once.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Shared by every connection's record: one reference count, not five.
    pub tcp: std::sync::Arc<TcpMetrics>,
    pub hbone: HboneMetrics,
    pub policy: PolicyMetrics,
    pub listeners: ListenerMetrics,
    pub xds: XdsMetrics,
    pub workloads: WorkloadMetrics,
    pub dns: DnsMetrics,
}

impl Metrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let tcp = &m.tcp;
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp.closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that could not be established",
            tcp.failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes from the server back to the client (Istio's naming, istio#32399)",
            tcp.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes from the client towards the server (Istio's naming, istio#32399)",
            tcp.received_bytes.clone(),
        );
        registry.register(
            "amesh_hbone_tls_handshakes",
            "Mutual-TLS connections the HBONE pool opened",
            m.hbone.handshakes.clone(),
        );
        registry.register(
            "amesh_hbone_handshakes_in_progress",
            "Inbound HBONE TLS handshakes under way (bounded by --max-hbone-handshakes)",
            m.hbone.handshakes_in_progress.clone(),
        );
        registry.register(
            "amesh_policy_dry_run_hits",
            "Connections a dry-run policy matched (not enforced)",
            m.policy.dry_run_hits.clone(),
        );
        registry.register(
            "istio_xds_connection_terminations",
            "xDS streams to the control plane that ended, by reason",
            m.xds.terminations.clone(),
        );
        registry.register(
            "istio_xds_message",
            "xDS responses received, by type URL",
            m.xds.messages.clone(),
        );
        registry.register(
            "istio_xds_message_bytes",
            "Bytes of xDS responses received, by type URL",
            m.xds.message_bytes.clone(),
        );
        // Istio's dashboards read the data plane's version from `istio_build`.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel",
                tag: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("istio_build", "Istio component build info", build);
        registry.register(
            "istio_tcp_sockets_open",
            "TCP sockets the pods' listeners hold open, by reporter",
            m.listeners.sockets_open.clone(),
        );
        let w = &m.workloads;
        registry.register(
            "istio_active_proxy_count",
            "Pods ztunnel proxies for now",
            w.active.clone(),
        );
        registry.register(
            "istio_pending_proxy_count",
            "Pods received but not yet proxied",
            w.pending.clone(),
        );
        registry.register(
            "istio_proxies_started",
            "Pod proxies started",
            w.started.clone(),
        );
        registry.register(
            "istio_proxies_stopped",
            "Pod proxies stopped",
            w.stopped.clone(),
        );
        let dns = &m.dns;
        registry.register(
            "istio_dns_requests",
            "DNS queries the in-pod proxy received",
            dns.requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_requests",
            "DNS queries sent on to an upstream resolver",
            dns.upstream_requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_failures",
            "Forwarded DNS queries no upstream resolver answered",
            dns.upstream_failures.clone(),
        );
        registry.register(
            "istio_dns_upstream_request_duration_seconds",
            "Time upstream resolvers took to answer",
            dns.upstream_duration.clone(),
        );
        registry.register(
            "amesh_accept_errors",
            "accept() failures on ztunnel's listeners (e.g. at the file-descriptor limit)",
            m.listeners.accept_errors.clone(),
        );
        registry.register(
            "amesh_connections_refused",
            "Connections closed before any policy decision, by listener and reason",
            m.listeners.refused.clone(),
        );
        m
    }
}
