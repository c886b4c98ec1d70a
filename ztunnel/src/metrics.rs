//! Prometheus metrics with Istio's names and labels, so existing dashboards and alerts work:
//! `istio_tcp_connections_opened_total`, `..._closed_total`, `..._failed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`, plus amesh's own
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

pub use crate::metrics_labels::{Reporter, ResponseFlag, SecurityPolicy};
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
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub failed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
    pub hbone_handshakes: Counter,
    pub dry_run_hits: Family<crate::proxy::authz::DryRunLabels, Counter>,
    pub xds: XdsMetrics,
    pub accept_errors: Family<ListenerLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub hbone_handshakes_in_progress: Gauge,
}

/// Which of ztunnel's listeners: `admin`, `readiness`, `metrics`, or a pod's `outbound`,
/// `hbone`, `plaintext` (summed over pods: a per-pod label would grow without bound).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: &'static str,
    /// `ztunnel_port`, `handshake_limit` or `certificate_not_ready`.
    pub reason: &'static str,
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

impl Metrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that could not be established",
            m.failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes from the server back to the client (Istio's naming, istio#32399)",
            m.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes from the client towards the server (Istio's naming, istio#32399)",
            m.received_bytes.clone(),
        );
        registry.register(
            "amesh_hbone_tls_handshakes",
            "Mutual-TLS connections the HBONE pool opened",
            m.hbone_handshakes.clone(),
        );
        registry.register(
            "amesh_policy_dry_run_hits",
            "Connections a dry-run policy matched (not enforced)",
            m.dry_run_hits.clone(),
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
        m.register_load(registry);
        m
    }

    fn register_load(&self, registry: &mut Registry) {
        registry.register(
            "amesh_accept_errors",
            "accept() failures on ztunnel's listeners (e.g. at the file-descriptor limit)",
            self.accept_errors.clone(),
        );
        registry.register(
            "amesh_connections_refused",
            "Connections closed before any policy decision, by listener and reason",
            self.refused.clone(),
        );
        registry.register(
            "amesh_hbone_handshakes_in_progress",
            "Inbound HBONE TLS handshakes under way (bounded by --max-hbone-handshakes)",
            self.hbone_handshakes_in_progress.clone(),
        );
    }

    /// Counts a connection refused on `listener` for `reason`.
    pub fn refuse(&self, listener: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { listener, reason })
            .inc();
    }
}
