//! What one client subscribed to for one type, and what it holds, following the delta xDS
//! rules Istio's ztunnel relies on: a first request with no names (or `*`) is a wildcard;
//! `*` subscribed and unsubscribed in one request is "nothing yet" (Istio's on-demand mode);
//! later requests may subscribe or unsubscribe names at any time, nonce or not, and a named
//! resource that does not exist is answered in `removed_resources` so the client stops
//! waiting for it.

use crate::catalog::{Catalog, Delta};
use amesh_proto::discovery as d;
use std::collections::{BTreeSet, HashMap};

/// The wildcard name.
const ALL: &str = "*";

#[derive(Debug, Default)]
pub struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version, as far as the control plane knows the client holds them.
    held: HashMap<String, String>,
    /// Names asked for by a request not yet answered.
    asked: Vec<String>,
}

impl Subscription {
    /// The subscription a type's first request on a stream opens (a reconnecting client
    /// lists what it holds).
    pub fn first(req: &d::DeltaDiscoveryRequest) -> Self {
        let mut s = Self {
            wildcard: req.resource_names_subscribe.is_empty(),
            held: req.initial_resource_versions.clone(),
            ..Self::default()
        };
        s.change(req);
        // The first answer covers everything subscribed; nothing is owed by name.
        s.asked.clear();
        s
    }

    /// Applies a later request's subscribe and unsubscribe lists; returns whether anything
    /// changed (then the client is owed an answer).
    pub fn change(&mut self, req: &d::DeltaDiscoveryRequest) -> bool {
        let mut changed = false;
        for name in &req.resource_names_subscribe {
            if name == ALL {
                changed |= !self.wildcard;
                self.wildcard = true;
            } else {
                // Every name asked for is answered, even one the client is thought to hold
                // (it asks because it does not have it): it waits for that answer.
                self.names.insert(name.clone());
                self.asked.push(name.clone());
                changed = true;
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == ALL {
                changed |= self.wildcard;
                self.wildcard = false;
            } else if self.names.remove(name) {
                changed = true;
            }
        }
        // What is no longer wanted the client drops itself (delta xDS): forget it.
        let (wildcard, names) = (self.wildcard, &self.names);
        self.held.retain(|name, _| wildcard || names.contains(name));
        changed
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What to send from `catalog`: new or changed resources the client wants, removals of
    /// what it holds that is gone, and every name it asked for: the resource, or its name in
    /// the removals when it does not exist. Records the result as held.
    /// Only what `in_scope` allows is sent; what the client holds that left its scope is
    /// removed.
    pub fn next(
        &mut self,
        catalog: &Catalog,
        type_url: &str,
        in_scope: &dyn Fn(&str) -> bool,
    ) -> Delta {
        let mut delta = catalog.diff_where(type_url, &self.held, |name| {
            self.wants(name) && in_scope(name)
        });
        for name in self.held.keys() {
            if !in_scope(name) && !delta.removed.contains(name) {
                delta.removed.push(name.clone());
            }
        }
        for name in std::mem::take(&mut self.asked) {
            match catalog.get(type_url, &name).filter(|_| in_scope(&name)) {
                Some(e) if !delta.updated.iter().any(|(n, _)| *n == name) => {
                    delta.updated.push((name, e));
                }
                Some(_) => {}
                None if !delta.removed.contains(&name) => delta.removed.push(name),
                None => {}
            }
        }
        delta.updated.sort_by(|a, b| a.0.cmp(&b.0));
        delta.removed.sort();
        for name in &delta.removed {
            self.held.remove(name);
        }
        for (name, e) in &delta.updated {
            self.held.insert(name.clone(), e.version.clone());
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Entry;
    use std::{collections::BTreeMap, sync::Arc};

    /// A catalog of one type whose resources have the given versions.
    fn catalog_of(t: &'static str, entries: &[(&str, &str)]) -> Catalog {
        let resources = entries
            .iter()
            .map(|(name, version)| {
                let e = Entry {
                    version: version.to_string(),
                    bytes: vec![],
                };
                (name.to_string(), Arc::new(e))
            })
            .collect();
        Catalog {
            types: BTreeMap::from([(t, resources)]),
            ..Catalog::default()
        }
    }

    const T: &str = amesh_proto::ADDRESS_TYPE_URL;

    fn req(sub: &[&str], unsub: &[&str]) -> d::DeltaDiscoveryRequest {
        d::DeltaDiscoveryRequest {
            type_url: T.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(d: &Delta) -> (Vec<&str>, Vec<&str>) {
        (
            d.updated.iter().map(|(n, _)| n.as_str()).collect(),
            d.removed.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn a_wildcard_gets_everything_and_then_changes() {
        let mut s = Subscription::first(&req(&[], &[]));
        let c = catalog_of(T, &[("a", "1"), ("b", "1")]);
        assert_eq!(names(&s.next(&c, T, &|_| true)), (vec!["a", "b"], vec![]));
        let c2 = catalog_of(T, &[("a", "2")]);
        assert_eq!(names(&s.next(&c2, T, &|_| true)), (vec!["a"], vec!["b"]));
        assert!(s.next(&c2, T, &|_| true).is_empty());
    }

    #[test]
    fn what_leaves_the_scope_is_removed_and_never_sent() {
        let mut s = Subscription::first(&req(&[], &[]));
        let c = catalog_of(T, &[("a", "1"), ("b", "1")]);
        let only_a = |n: &str| n == "a";
        assert_eq!(names(&s.next(&c, T, &only_a)), (vec!["a"], vec![]));
        // "a" leaves the scope, "b" enters it.
        let only_b = |n: &str| n == "b";
        assert_eq!(names(&s.next(&c, T, &only_b)), (vec!["b"], vec!["a"]));
        assert!(s.next(&c, T, &only_b).is_empty());
    }

    /// Istio's ztunnel with XDS_ON_DEMAND: "*" subscribed and unsubscribed at once, then
    /// one name at a time, without a nonce.
    #[test]
    fn on_demand_names_are_answered_or_said_to_be_absent() {
        let c = catalog_of(T, &[("a", "1"), ("b", "1")]);
        let mut s = Subscription::first(&req(&["*"], &["*"]));
        assert!(
            s.next(&c, T, &|_| true).is_empty(),
            "nothing subscribed yet"
        );
        assert!(s.change(&req(&["a"], &[])));
        assert_eq!(names(&s.next(&c, T, &|_| true)), (vec!["a"], vec![]));
        assert!(s.change(&req(&["nope"], &[])));
        assert_eq!(
            names(&s.next(&c, T, &|_| true)),
            (vec![], vec!["nope"]),
            "unknown: removed"
        );
        // b changes: not subscribed, not sent; a changes: sent.
        let c2 = catalog_of(T, &[("a", "2"), ("b", "2")]);
        assert_eq!(names(&s.next(&c2, T, &|_| true)), (vec!["a"], vec![]));
        // Asked again for what it is thought to hold: answered all the same.
        assert!(s.change(&req(&["a"], &[])));
        assert_eq!(names(&s.next(&c2, T, &|_| true)), (vec!["a"], vec![]));
        // Unsubscribed: forgotten, no removal sent.
        assert!(s.change(&req(&[], &["a"])));
        let c3 = catalog_of(T, &[("a", "3")]);
        assert!(s.next(&c3, T, &|_| true).is_empty());
        // The name appears later: sent once subscribed.
        assert!(s.change(&req(&["late"], &[])));
        assert_eq!(names(&s.next(&c3, T, &|_| true)), (vec![], vec!["late"]));
        let c4 = catalog_of(T, &[("late", "1")]);
        assert_eq!(names(&s.next(&c4, T, &|_| true)), (vec!["late"], vec![]));
    }

    #[test]
    fn a_reconnect_with_held_versions_gets_only_the_difference() {
        let mut first = req(&[], &[]);
        first.initial_resource_versions = [("a".to_string(), "1".to_string())].into();
        let mut s = Subscription::first(&first);
        let c = catalog_of(T, &[("a", "1"), ("b", "1")]);
        assert_eq!(names(&s.next(&c, T, &|_| true)), (vec!["b"], vec![]));
    }
}
