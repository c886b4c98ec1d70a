//! A DestinationRule's traffic policy as a waypoint enforces it: connection-pool limits
//! (Envoy's circuit breakers) and outlier detection. What a waypoint does not enforce yet is
//! reported by the control plane and never sent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Connection-pool limits for one destination Service (0: no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub http1_max_pending_requests: u32,
    /// `http.http2MaxRequests`.
    pub http2_max_requests: u32,
    /// `tcp.connectTimeout`, milliseconds (0: the waypoint's default).
    pub connect_timeout_ms: u64,
    /// `http.maxRequestsPerConnection`: an upstream connection is retired after this many
    /// requests (0: no limit).
    pub max_requests_per_connection: u32,
    /// `http.maxRetries`: retries in flight to the Service at once (0: no limit, Istio's
    /// default).
    pub max_retries: u32,
    /// `http.idleTimeout`, milliseconds: an idle upstream connection is closed after it
    /// (0: Istio's default of an hour).
    pub idle_timeout_ms: u64,
}

impl ConnectionPool {
    /// The most requests in flight to the Service at once: an HTTP/1.1 request holds a
    /// connection, so connections plus the requests allowed to wait for one; HTTP/2
    /// requests are bounded by `http2MaxRequests`. `None`: unbounded.
    pub fn max_in_flight(&self, http2: bool) -> Option<u32> {
        // Envoy's max_requests (`http2MaxRequests`) bounds HTTP/1.1 requests too.
        let requests = (self.http2_max_requests > 0).then_some(self.http2_max_requests);
        if http2 {
            return requests;
        }
        let connections = (self.max_connections > 0).then(|| {
            self.max_connections
                .saturating_add(self.http1_max_pending_requests)
        });
        match (connections, requests) {
            (Some(c), Some(r)) => Some(c.min(r)),
            (c, r) => c.or(r),
        }
    }
}

/// A DestinationRule's traffic policy, the parts a waypoint enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrafficPolicy {
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: Option<LoadBalancer>,
    /// `portLevelSettings`, by Service port.
    pub ports: BTreeMap<u16, PortPolicy>,
    /// The subsets' own `trafficPolicy`, by subset name.
    pub subsets: BTreeMap<String, SubsetPolicy>,
}

/// A subset's `trafficPolicy`: the parts it names replace the Service-wide ones, and its
/// own `portLevelSettings` apply over those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubsetPolicy {
    pub parts: PortPolicy,
    pub ports: BTreeMap<u16, PortPolicy>,
}

/// A port's settings: each part it names replaces the Service-wide one (Istio's
/// `portLevelSettings`; what it leaves out stays Service-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortPolicy {
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: Option<LoadBalancer>,
}

impl PortPolicy {
    /// Replaces the parts of `t` this names.
    fn apply_to(&self, t: &mut TrafficPolicy) {
        if let Some(c) = &self.connection_pool {
            t.connection_pool = c.clone();
        }
        if self.outlier_detection.is_some() {
            t.outlier_detection = self.outlier_detection.clone();
        }
        if self.load_balancer.is_some() {
            t.load_balancer = self.load_balancer.clone();
        }
    }
}

impl TrafficPolicy {
    /// The policy for requests to Service port `port`.
    pub fn at_port(&self, port: u16) -> TrafficPolicy {
        self.at(port, None)
    }

    /// The policy for requests to Service port `port` of subset `subset`, in Istio's order:
    /// Service-wide, its port's settings, the subset's, the subset's port's.
    pub fn at(&self, port: u16, subset: Option<&str>) -> TrafficPolicy {
        let mut out = TrafficPolicy {
            ports: BTreeMap::new(),
            subsets: BTreeMap::new(),
            ..self.clone()
        };
        if let Some(p) = self.ports.get(&port) {
            p.apply_to(&mut out);
        }
        if let Some(s) = subset.and_then(|s| self.subsets.get(s)) {
            s.parts.apply_to(&mut out);
            if let Some(p) = s.ports.get(&port) {
                p.apply_to(&mut out);
            }
        }
        out
    }

    /// Whether outlier detection applies anywhere (Service-wide, a port, a subset).
    pub fn has_outlier_detection(&self) -> bool {
        self.outlier_detection.is_some()
            || self.ports.values().any(|p| p.outlier_detection.is_some())
            || self.subsets.values().any(|s| {
                s.parts.outlier_detection.is_some()
                    || s.ports.values().any(|p| p.outlier_detection.is_some())
            })
    }
}

/// How a waypoint picks among a Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancer {
    /// In turn (Istio's default).
    RoundRobin,
    /// At random (also LEAST_REQUEST, which the waypoint approximates so).
    Random,
    /// By a hash of something of the request: the same value reaches the same endpoint
    /// while the endpoints stay the same.
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

/// Outlier detection (Envoy's passive health checking), with Istio's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and connection failures) that eject an endpoint (0: off).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 answers (and connection failures) that eject one (0: off).
    pub consecutive_gateway_errors: u32,
    /// An ejection lasts this times the number of times the endpoint was ejected.
    pub base_ejection_ms: u64,
    /// The most endpoints of a Service ejected at once, percent (at least one may be).
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, percent, nothing is ejected.
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            base_ejection_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_envoys_circuit_breakers() {
        let p = ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 1,
            ..Default::default()
        };
        assert_eq!(p.max_in_flight(false), Some(2));
        assert_eq!(p.max_in_flight(true), None);
        let requests_only = ConnectionPool {
            http2_max_requests: 3,
            ..Default::default()
        };
        assert_eq!(requests_only.max_in_flight(false), Some(3), "HTTP/1.1 too");
        let both = ConnectionPool {
            http2_max_requests: 1,
            ..p.clone()
        };
        assert_eq!(both.max_in_flight(false), Some(1), "the smaller");
        assert_eq!(ConnectionPool::default().max_in_flight(false), None);
    }

    #[test]
    fn port_level_settings_replace_what_they_name_only() {
        let service_wide = TrafficPolicy {
            connection_pool: ConnectionPool {
                max_connections: 10,
                ..Default::default()
            },
            load_balancer: Some(LoadBalancer::Random),
            ports: BTreeMap::from([(
                8080,
                PortPolicy {
                    connection_pool: Some(ConnectionPool {
                        max_connections: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let p = service_wide.at_port(8080);
        assert_eq!(p.connection_pool.max_connections, 1);
        assert_eq!(p.load_balancer, Some(LoadBalancer::Random), "kept");
        assert!(p.ports.is_empty());
        assert_eq!(service_wide.at_port(80).connection_pool.max_connections, 10);
        // A subset's parts over the port's, its own port's over those.
        let mut with_subset = service_wide.clone();
        with_subset.subsets.insert(
            "v2".into(),
            SubsetPolicy {
                parts: PortPolicy {
                    load_balancer: Some(LoadBalancer::RoundRobin),
                    ..Default::default()
                },
                ports: BTreeMap::from([(
                    8080,
                    PortPolicy {
                        connection_pool: Some(ConnectionPool {
                            max_connections: 7,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )]),
            },
        );
        let v2 = with_subset.at(8080, Some("v2"));
        assert_eq!(v2.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(v2.connection_pool.max_connections, 7);
        assert_eq!(
            with_subset
                .at(80, Some("v2"))
                .connection_pool
                .max_connections,
            10
        );
        assert_eq!(
            with_subset
                .at(8080, Some("v1"))
                .connection_pool
                .max_connections,
            1
        );
        assert!(!with_subset.has_outlier_detection());
    }
}
