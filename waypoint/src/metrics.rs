//! Istio's waypoint telemetry: `istio_requests_total`, `istio_request_duration_milliseconds`
//! (Istio's buckets), `istio_request_bytes`/`istio_response_bytes` are left for later; TCP
//! connections relayed; CONNECTs refused by reason.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::sync::Arc;

/// Istio's request duration buckets (milliseconds).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The labels of Istio's request metrics, as its waypoint reports them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
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
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub destination_service: String,
    pub response_flags: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
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
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            tcp_opened: Family::default(),
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
            "istio_tcp_connections_opened",
            "TCP connections relayed",
            metrics.tcp_opened.clone(),
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
