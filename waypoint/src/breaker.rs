//! Circuit breakers (a DestinationRule's `connectionPool`): requests in flight to a Service
//! are counted, and one past the limit is answered 503 with Envoy's `UO` (upstream overflow)
//! at once instead of piling up. A request counts until its response body is through.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

/// In-flight counts by Service.
#[derive(Debug, Default)]
pub struct Breakers(Mutex<HashMap<String, Arc<AtomicU32>>>);

/// A request let through; it stops counting when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicU32>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breakers {
    /// Lets a request to `service` through unless `limit` are in flight already.
    pub fn admit(&self, service: &str, limit: u32) -> Option<Admitted> {
        let counter = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_string())
            .or_default()
            .clone();
        let admitted = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        admitted.then_some(Admitted(counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_until_a_request_is_done() {
        let b = Breakers::default();
        let first = b.admit("ns/web", 2).expect("1 of 2");
        let second = b.admit("ns/web", 2).expect("2 of 2");
        assert!(b.admit("ns/web", 2).is_none(), "overflow");
        assert!(b.admit("ns/api", 2).is_some(), "per Service");
        drop(first);
        assert!(b.admit("ns/web", 2).is_some(), "room again");
        drop(second);
    }
}
