//! Istio's waypoint telemetry: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes` (histograms, Envoy's default buckets as
//! Istio's waypoint has them; bytes are the head plus the body), the four `istio_tcp_*`
//! metrics for relayed TCP with the same source and destination labels; CONNECTs refused by
//! reason.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;

/// Istio's request duration buckets (milliseconds), also its size buckets (bytes).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The labels of Istio's request metrics, as its waypoint reports them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Who called and what it reached: the labels Istio's request and TCP metrics share.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
}

/// Why a CONNECT (or a connection) was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RefuseReason {
    /// Its authority is not a service or workload bound to this waypoint.
    NotBound,
    /// Not CONNECT, or an authority that is not `ip:port`.
    BadRequest,
    /// The waypoint has no certificate or configuration yet (fail closed).
    NotReady,
    /// TLS failed (no client certificate, wrong trust domain).
    Handshake,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefuseLabels {
    pub reason: RefuseReason,
}

/// The labels of Istio's TCP metrics (`request_protocol="tcp"`).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// A destination Service by host name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub destination_service: String,
}

/// A policy by `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Debug)]
pub struct Metrics {
    /// AUDIT policies that matched a request.
    pub audits: Family<PolicyLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    pub ejections: Family<ServiceLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// Bytes sent to the client (Istio's "sent" is the destination's answer).
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub refused: Family<RefuseLabels, Counter>,
}

/// The metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Registered {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
}

impl Metrics {
    #[allow(clippy::new_ret_no_self, reason = "the registry comes with them")]
    pub fn new() -> Registered {
        let metrics = Arc::new(Metrics {
            audits: Family::default(),
            ejections: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            request_bytes: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            response_bytes: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            refused: Family::default(),
        });
        let mut registry = Registry::default();
        registry.register(
            "istio_requests",
            "Requests handled",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request sizes (head and body)",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response sizes (head and body)",
            metrics.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections relayed",
            metrics.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections relayed and closed",
            metrics.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes relayed to the client",
            metrics.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes relayed from the client",
            metrics.tcp_received.clone(),
        );
        registry.register(
            "amesh_waypoint_outlier_ejections",
            "Endpoints ejected by outlier detection",
            metrics.ejections.clone(),
        );
        registry.register(
            "amesh_waypoint_policy_audit",
            "Requests an AUDIT AuthorizationPolicy matched",
            metrics.audits.clone(),
        );
        registry.register(
            "amesh_waypoint_refused",
            "CONNECTs and connections refused, by reason",
            metrics.refused.clone(),
        );
        Registered { registry, metrics }
    }

    pub fn refuse(&self, reason: RefuseReason) {
        self.refused.get_or_create(&RefuseLabels { reason }).inc();
    }
}
