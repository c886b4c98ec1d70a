//! The bookkeeping of a delta ADS client, apart from the network: per subscribed type its
//! handler, the resource names asked for, the versions held (reported as
//! `initial_resource_versions` on reconnect, so the control plane sends only what changed
//! meanwhile), and whether it has had its first response (readiness).

use crate::handler::{ErasedHandler, Handler, Rejected};
use amesh_proto::discovery as d;
use std::collections::{BTreeSet, HashMap};
use tracing::{info, warn};

/// gRPC status code INVALID_ARGUMENT, carried by a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// The wildcard resource name of delta xDS.
const WILDCARD: &str = "*";

/// What one response did, for observers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub type_url: String,
    pub nonce: String,
    pub updated: usize,
    pub removed: usize,
    /// Empty when the response was ACKed.
    pub rejected: Vec<Rejected>,
}

/// A type the client does not subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type {0} is not subscribed; register a handler for it before running the client")]
pub struct UnknownType(pub String);

struct Subscription {
    type_url: String,
    handler: Box<dyn ErasedHandler>,
    wildcard: bool,
    /// Names asked for on demand (beside the wildcard, or instead of it).
    names: BTreeSet<String>,
    /// Accepted resource name → version.
    versions: HashMap<String, String>,
    synced: bool,
}

/// Every subscribed type, in registration order.
#[derive(Default)]
pub struct Subscriptions {
    types: Vec<Subscription>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.types.iter().map(|s| s.type_url.as_str()).collect();
        f.debug_struct("Subscriptions")
            .field("types", &urls)
            .finish()
    }
}

impl Subscriptions {
    /// Subscribes to every resource of `type_url` (how ztunnel asks for workloads).
    pub fn wildcard(&mut self, type_url: &str, handler: impl Handler) {
        self.add(type_url, true, BTreeSet::new(), handler);
    }

    /// Subscribes to the named resources of `type_url` only; more can be added later with
    /// [`Subscriptions::add_names`] (on demand, as a waypoint asks for what it routes to).
    pub fn named(
        &mut self,
        type_url: &str,
        names: impl IntoIterator<Item = String>,
        handler: impl Handler,
    ) {
        self.add(type_url, false, names.into_iter().collect(), handler);
    }

    fn add(
        &mut self,
        type_url: &str,
        wildcard: bool,
        names: BTreeSet<String>,
        handler: impl Handler,
    ) {
        // A second handler for a type replaces the first: one stream serves a type once.
        self.types.retain(|s| s.type_url != type_url);
        self.types.push(Subscription {
            type_url: type_url.to_string(),
            handler: Box::new(handler),
            wildcard,
            names,
            versions: HashMap::new(),
            synced: false,
        });
    }

    /// Adds `names` to the subscription of `type_url`. Returns the request that asks for the
    /// new ones on an open stream (`None` when all were asked for already); after a reconnect
    /// the first request names them all.
    pub fn add_names(
        &mut self,
        type_url: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Result<Option<d::DeltaDiscoveryRequest>, UnknownType> {
        let sub = self
            .types
            .iter_mut()
            .find(|s| s.type_url == type_url)
            .ok_or_else(|| UnknownType(type_url.to_string()))?;
        let new: Vec<String> = names
            .into_iter()
            .filter(|n| sub.names.insert(n.clone()))
            .collect();
        Ok((!new.is_empty()).then(|| d::DeltaDiscoveryRequest {
            type_url: sub.type_url.clone(),
            resource_names_subscribe: new,
            ..Default::default()
        }))
    }

    /// The first request of every type on a new stream, with the versions already held.
    pub fn initial_requests(&self, node: &d::Node) -> Vec<d::DeltaDiscoveryRequest> {
        self.types
            .iter()
            .map(|s| d::DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: s.type_url.clone(),
                resource_names_subscribe: s.initial_names(),
                initial_resource_versions: s.versions.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// True once every type has had its first response.
    pub fn all_synced(&self) -> bool {
        self.types.iter().all(|s| s.synced)
    }

    /// How many types have had their first response.
    pub fn synced_count(&self) -> usize {
        self.types.iter().filter(|s| s.synced).count()
    }

    /// The versions held for `type_url` (accepted resource name → version).
    pub fn versions(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.types
            .iter()
            .find(|s| s.type_url == type_url)
            .map(|s| &s.versions)
    }

    /// Applies one response through its type's handler and returns the ACK, or the NACK
    /// naming every rejected resource, with what was applied.
    pub fn respond(
        &mut self,
        response: d::DeltaDiscoveryResponse,
    ) -> (d::DeltaDiscoveryRequest, Option<Applied>) {
        let Some(sub) = self
            .types
            .iter_mut()
            .find(|s| s.type_url == response.type_url)
        else {
            let message = UnknownType(response.type_url.clone()).to_string();
            return (nack(&response.type_url, &response.nonce, message), None);
        };
        let applied = sub.apply(response);
        let reply = if applied.rejected.is_empty() {
            d::DeltaDiscoveryRequest {
                type_url: applied.type_url.clone(),
                response_nonce: applied.nonce.clone(),
                ..Default::default()
            }
        } else {
            let message = applied
                .rejected
                .iter()
                .map(Rejected::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            nack(&applied.type_url, &applied.nonce, message)
        };
        (reply, Some(applied))
    }
}

impl Subscription {
    /// An empty list is the legacy wildcard, as ztunnel has always asked; with names beside
    /// the wildcard, delta xDS wants `*` spelled out.
    fn initial_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.names.iter().cloned().collect();
        if self.wildcard && !names.is_empty() {
            names.insert(0, WILDCARD.to_string());
        }
        names
    }

    fn apply(&mut self, response: d::DeltaDiscoveryResponse) -> Applied {
        let mut versions = Vec::with_capacity(response.resources.len());
        let resources: Vec<(String, Vec<u8>)> = response
            .resources
            .into_iter()
            .map(|r| {
                versions.push((r.name.clone(), r.version));
                (r.name, r.resource.map(|a| a.value).unwrap_or_default())
            })
            .collect();
        let removed = response.removed_resources;
        for name in &removed {
            self.versions.remove(name);
        }
        let removed_count = removed.len();
        let rejected = self.handler.process(resources, removed);
        let bad: BTreeSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        let updated = versions.len().saturating_sub(rejected.len());
        for (name, version) in versions {
            // A rejected resource's version is not reported as held: the control plane
            // must send it again once it changes.
            if !bad.contains(name.as_str()) {
                self.versions.insert(name, version);
            }
        }
        self.synced = true;
        let type_url = self.type_url.as_str();
        info!(type_url, nonce = %response.nonce, updated, removed = removed_count, rejected = rejected.len(), "xDS update applied");
        for r in &rejected {
            warn!(type_url, resource = %r.name, reason = %r.reason, "resource rejected (NACK); its last good version stays");
        }
        Applied {
            type_url: self.type_url.clone(),
            nonce: response.nonce,
            updated,
            removed: removed_count,
            rejected,
        }
    }
}

fn nack(type_url: &str, nonce: &str, message: String) -> d::DeltaDiscoveryRequest {
    d::DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: Some(d::Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
