//! PeerAuthentication at ztunnel: whether a workload accepts plaintext (connections arriving
//! on 15006, from outside the mesh). HBONE is always mutual TLS, so `DISABLE` is ignored, as
//! in Istio. The most specific policy wins: workload over namespace over mesh-wide (root
//! namespace); a port-level mode overrides the policy's own mode for that port.
//!
//! ztunnel does not evaluate PeerAuthentication itself: as istiod does, the mode a workload
//! ends up with is converted into one DENY policy ([`strict_policy`]) for peers without an
//! identity. The control plane and ztunnel's local file both convert through here, so both
//! refuse the same connections in the name of the same policy.

use crate::model::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MtlsMode {
    /// Refuse plaintext.
    Strict,
    /// Accept plaintext and mTLS (the default).
    Permissive,
    /// Inherit from the next less specific policy.
    Unset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PeerScope {
    Mesh,
    Namespace,
    /// Applies to the workloads listed in [`PeerAuthentication::workloads`] (ztunnel's file)
    /// or selected by its labels (the control plane).
    Workload,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub scope: PeerScope,
    /// Workload uids, for `PeerScope::Workload` in ztunnel's file.
    pub workloads: Vec<String>,
    pub mode: MtlsMode,
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// The policies that apply to one workload in `namespace`, most specific first (at most one
/// per scope, the first listed): `selects` tells whether a workload-scoped one selects it.
pub fn chain<'a, T>(
    items: &'a [T],
    policy: impl Fn(&T) -> &PeerAuthentication,
    namespace: &str,
    selects: impl Fn(&T) -> bool,
) -> Vec<&'a PeerAuthentication> {
    [PeerScope::Workload, PeerScope::Namespace, PeerScope::Mesh]
        .into_iter()
        .filter_map(|scope| {
            items
                .iter()
                .find(|item| {
                    let p = policy(item);
                    p.scope == scope
                        && match scope {
                            PeerScope::Mesh => true,
                            PeerScope::Namespace => p.namespace == namespace,
                            PeerScope::Workload => p.namespace == namespace && selects(item),
                        }
                })
                .map(&policy)
        })
        .collect()
}

/// The mode for plaintext to `port` (`None`: the workload's own mode) under `chain`: the
/// first mode set, from the most specific down.
pub fn mode_in(chain: &[&PeerAuthentication], port: Option<u16>) -> MtlsMode {
    chain
        .iter()
        .find_map(|p| {
            let mode = port
                .and_then(|port| p.port_modes.get(&port).copied())
                .unwrap_or(p.mode);
            (mode != MtlsMode::Unset).then_some(mode)
        })
        .unwrap_or(MtlsMode::Permissive)
}

/// The mode for plaintext to `port` of the workload `uid` in `namespace`, among policies
/// that list their workloads by uid.
pub fn effective_mode(
    policies: &[PeerAuthentication],
    namespace: &str,
    uid: &str,
    port: u16,
) -> MtlsMode {
    let chain = chain(
        policies,
        |p| p,
        namespace,
        |p| p.workloads.iter().any(|w| w == uid),
    );
    mode_in(&chain, Some(port))
}

/// The mTLS requirement of one workload (its `chain`) as the policy ztunnel enforces: DENY
/// peers without an identity on the ports where plaintext is not allowed, decided port by
/// port, so a namespace PERMISSIVE under a mesh-wide STRICT is honoured. Workloads with the
/// same requirement get the same policy (same name, in `root_namespace`), so it can be shared.
/// `None`: plaintext is allowed everywhere.
pub fn strict_policy(chain: &[&PeerAuthentication], root_namespace: &str) -> Option<Authorization> {
    let strict = mode_in(chain, None) == MtlsMode::Strict;
    let mut exceptions: Vec<u16> = chain
        .iter()
        .flat_map(|p| p.port_modes.keys().copied())
        .filter(|&port| (mode_in(chain, Some(port)) == MtlsMode::Strict) != strict)
        .collect();
    exceptions.sort_unstable();
    exceptions.dedup();
    let ports = exceptions
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("_");
    let no_identity = vec![StringMatch::Presence];
    let (name, matched) = if strict {
        let suffix = if ports.is_empty() {
            String::new()
        } else {
            format!("_except_{ports}")
        };
        let m = Match {
            not_principals: no_identity,
            not_destination_ports: exceptions,
            ..Default::default()
        };
        (format!("converted_peer_authentication_strict{suffix}"), m)
    } else if !exceptions.is_empty() {
        let m = Match {
            not_principals: no_identity,
            destination_ports: exceptions,
            ..Default::default()
        };
        (
            format!("converted_peer_authentication_strict_ports_{ports}"),
            m,
        )
    } else {
        return None;
    };
    Some(Authorization {
        name,
        namespace: root_namespace.to_string(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![matched],
            }],
        }],
        dry_run: false,
    })
}
