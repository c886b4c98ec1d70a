//! Outlier detection (a DestinationRule's `outlierDetection`, Envoy's passive health
//! checking): each endpoint's consecutive errors are counted as its answers come back; one
//! that reaches the limit is ejected (no request is sent to it) for the base ejection time
//! times the number of times it was ejected, as long as not more than the allowed share of
//! the Service's endpoints is out at once (one may always be).

use amesh_policy::traffic::OutlierDetection;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};
use tracing::info;

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Health by (Service, endpoint uid).
#[derive(Debug, Default)]
pub struct Outliers(Mutex<HashMap<(String, String), Health>>);

/// What an answer says of its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 5xx other than a gateway error.
    ServerError,
    /// 502, 503, 504, or the connection failed.
    GatewayError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Self::GatewayError,
            500..=599 => Self::ServerError,
            _ => Self::Ok,
        }
    }
}

impl Outliers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Health>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoints of `service` ejected now.
    pub fn ejected(&self, service: &str) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|((s, _), h)| s == service && h.ejected_until.is_some_and(|t| t > now))
            .map(|((_, uid), _)| uid.clone())
            .collect()
    }

    /// Records an answer of endpoint `uid` of `service` (which has `endpoints` in all);
    /// returns whether it was ejected by it. Returns false too if it was not ejected
    /// because too many are out already.
    pub fn record(
        &self,
        service: &str,
        uid: &str,
        endpoints: usize,
        outcome: Outcome,
        policy: &OutlierDetection,
    ) -> bool {
        let now = Instant::now();
        let mut all = self.lock();
        let out_now = all
            .iter()
            .filter(|((s, _), h)| s == service && h.ejected_until.is_some_and(|t| t > now))
            .count();
        let h = all
            .entry((service.to_string(), uid.to_string()))
            .or_default();
        match outcome {
            Outcome::Ok => {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
                return false;
            }
            Outcome::ServerError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway += 1;
            }
        }
        let tripped = (policy.consecutive_5xx > 0 && h.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway_errors > 0
                && h.consecutive_gateway >= policy.consecutive_gateway_errors);
        let healthy = endpoints.saturating_sub(out_now);
        let health_ok =
            endpoints == 0 || (healthy * 100) / endpoints >= policy.min_health_percent as usize;
        let room = (endpoints * policy.max_ejection_percent as usize / 100).max(1);
        if !tripped || !health_ok || out_now >= room || h.ejected_until.is_some_and(|t| t > now) {
            return false;
        }
        h.ejections += 1;
        let time = Duration::from_millis(policy.base_ejection_ms) * h.ejections;
        h.ejected_until = Some(now + time);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        info!(
            service,
            endpoint = uid,
            ejection = h.ejections,
            for_ms = time.as_millis() as u64,
            "endpoint ejected (outlier detection)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_ejected_after_its_errors_within_the_allowed_share() {
        let o = Outliers::default();
        let policy = OutlierDetection {
            consecutive_5xx: 2,
            max_ejection_percent: 50,
            ..Default::default()
        };
        assert!(!o.record("s", "a", 4, Outcome::ServerError, &policy));
        assert!(
            !o.record("s", "a", 4, Outcome::Ok, &policy),
            "a success resets"
        );
        assert!(!o.record("s", "a", 4, Outcome::ServerError, &policy));
        assert!(
            o.record("s", "a", 4, Outcome::GatewayError, &policy),
            "two in a row"
        );
        assert_eq!(o.ejected("s"), ["a"]);
        o.record("s", "b", 4, Outcome::ServerError, &policy);
        assert!(
            o.record("s", "b", 4, Outcome::ServerError, &policy),
            "50% of 4: two may be out"
        );
        o.record("s", "c", 4, Outcome::ServerError, &policy);
        assert!(
            !o.record("s", "c", 4, Outcome::ServerError, &policy),
            "a third may not"
        );
        assert!(o.ejected("other").is_empty());
    }
}
