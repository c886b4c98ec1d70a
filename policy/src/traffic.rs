//! A DestinationRule's traffic policy as a waypoint enforces it: connection-pool limits
//! (Envoy's circuit breakers). What a waypoint does not enforce yet is reported by the
//! control plane and never sent.

use serde::{Deserialize, Serialize};

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
}

impl ConnectionPool {
    /// The most requests in flight to the Service at once: an HTTP/1.1 request holds a
    /// connection, so connections plus the requests allowed to wait for one; HTTP/2
    /// requests are bounded by `http2MaxRequests`. `None`: unbounded.
    pub fn max_in_flight(&self, http2: bool) -> Option<u32> {
        if http2 {
            (self.http2_max_requests > 0).then_some(self.http2_max_requests)
        } else if self.max_connections > 0 {
            Some(self.max_connections + self.http1_max_pending_requests)
        } else {
            None
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
            http2_max_requests: 0,
        };
        assert_eq!(p.max_in_flight(false), Some(2));
        assert_eq!(p.max_in_flight(true), None);
        assert_eq!(ConnectionPool::default().max_in_flight(false), None);
    }
}
