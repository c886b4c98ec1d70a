//! Prometheus metrics with Istio's names and labels, so existing dashboards and alerts work:
//! `istio_tcp_connections_opened_total`, `..._closed_total`, `..._failed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`, plus amesh's own
//! `amesh_hbone_tls_handshakes_total` (how well the HBONE pool reuses connections), and the
//! xDS client's `istio_xds_connection_terminations_total`, `istio_xds_message_total` and
//! `istio_xds_message_bytes_total`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Istio's TCP metric labels. Unknown values are "unknown", as Istio reports them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` (outbound side) or `destination` (inbound side).
    pub reporter: &'static str,
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
    /// `-` on success; `CONNECT`, `DENY`, `TLS_FAILURE`, ... when the connection failed.
    pub response_flags: &'static str,
    /// `mutual_tls` over HBONE, `unknown` for plain TCP.
    pub connection_security_policy: &'static str,
}

pub const UNKNOWN: &str = "unknown";

impl TcpLabels {
    pub fn new(reporter: &'static str) -> Self {
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
            response_flags: "-",
            connection_security_policy: UNKNOWN,
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
        m
    }
}
