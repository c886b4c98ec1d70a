//! Authorization at the destination: the decision for a connection to one of this node's
//! pods, and the registry of live inbound connections that a policy change re-checks.

use crate::{
    metrics::{DryRunLabels, PolicyAction, PolicyMetrics},
    signal::{Raise, Stop},
    state::State,
};
use amesh_identity::Identity;
use amesh_policy::{Connection, Decision, evaluate};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};
use tracing::{info, warn};

/// What a connection is, for policy.
#[derive(Clone, Debug)]
pub struct Facts {
    pub pod_namespace: String,
    pub pod_name: String,
    pub source: Option<Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// Decides a connection against the policies that apply to its destination pod. A policy the
/// pod references but ztunnel does not know refuses the connection (fail closed).
pub fn authorize(state: &State, facts: &Facts, metrics: &PolicyMetrics) -> Decision {
    let workload = state.workload_by_name(&facts.pod_namespace, &facts.pod_name);
    let policies = match state.policies_for(&facts.pod_namespace, workload.map(|w| w.as_ref())) {
        Ok(p) => p,
        Err(missing) => {
            warn!(pod = %facts.pod_name, policy = %missing, "policy referenced but not known yet; refusing (fail closed)");
            return Decision::Deny {
                by: format!("{missing} (referenced, not known)"),
            };
        }
    };
    let refs: Vec<&amesh_policy::Authorization> = policies.iter().map(|p| p.as_ref()).collect();
    let conn = Connection {
        source: facts.source.as_ref(),
        source_ip: facts.source_ip,
        destination_ip: facts.destination_ip,
        destination_port: facts.destination_port,
    };
    let outcome = evaluate(&refs, &conn);
    for (policy, action) in outcome.dry_run_hits {
        let action = PolicyAction::from(action);
        info!(%policy, %action, pod = %facts.pod_name, "dry-run policy matched (not enforced)");
        metrics
            .dry_run_hits
            .get_or_create(&DryRunLabels { policy, action })
            .inc();
    }
    outcome.decision
}

struct Live {
    facts: Facts,
    kill: Raise,
}

/// Inbound connections that are open now, so a policy change can close the ones it denies.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Live>>,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConnections").finish_non_exhaustive()
    }
}

/// Unregisters a connection when dropped.
#[derive(Debug)]
pub struct LiveGuard {
    id: u64,
    registry: Arc<LiveConnections>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tracks an allowed connection; the `Stop` is raised if a later policy denies it.
    pub fn register(self: &Arc<Self>, facts: Facts) -> (LiveGuard, Stop) {
        let (kill, stop) = Stop::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Live { facts, kill });
        (
            LiveGuard {
                id,
                registry: self.clone(),
            },
            stop,
        )
    }

    /// Re-decides every open connection under `state`; closes the ones now denied. The
    /// facts are copied out and judged without the lock, which every new and closing
    /// connection takes.
    pub fn recheck(&self, state: &State, metrics: &PolicyMetrics) {
        let open: Vec<(u64, Facts)> = self
            .lock()
            .iter()
            .map(|(id, live)| (*id, live.facts.clone()))
            .collect();
        let denied: Vec<(u64, Facts, String)> = open
            .into_iter()
            .filter_map(|(id, facts)| match authorize(state, &facts, metrics) {
                Decision::Deny { by } => Some((id, facts, by)),
                Decision::Allow { .. } => None,
            })
            .collect();
        if denied.is_empty() {
            return;
        }
        let conns = self.lock();
        for (id, facts, by) in denied {
            // Gone meanwhile: it closed on its own.
            let Some(live) = conns.get(&id) else { continue };
            warn!(pod = %facts.pod_name, source = ?facts.source.as_ref().map(|i| i.to_string()), policy = %by, "closing a connection a policy change now denies");
            live.kill.raise();
        }
    }
}
