//! PeerAuthentication at ztunnel: whether a workload accepts plaintext (connections arriving
//! on 15006, from outside the mesh). HBONE is always mutual TLS, so `DISABLE` is ignored, as
//! in Istio. The most specific policy wins: workload over namespace over mesh-wide (root
//! namespace); a port-level mode overrides the policy's own mode for that port.

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
    /// Applies to the workloads listed in [`PeerAuthentication::workloads`].
    Workload,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub scope: PeerScope,
    /// Workload uids, for `PeerScope::Workload`.
    pub workloads: Vec<String>,
    pub mode: MtlsMode,
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// The mode for plaintext to `port` of the workload `uid` in `namespace`.
pub fn effective_mode(
    policies: &[PeerAuthentication],
    namespace: &str,
    uid: &str,
    port: u16,
) -> MtlsMode {
    let pick = |scope: PeerScope| {
        policies.iter().find(|p| {
            p.scope == scope
                && match scope {
                    PeerScope::Mesh => true,
                    PeerScope::Namespace => p.namespace == namespace,
                    PeerScope::Workload => {
                        p.namespace == namespace && p.workloads.iter().any(|w| w == uid)
                    }
                }
        })
    };
    // From the most specific down, the first mode that is set for this port wins.
    for scope in [PeerScope::Workload, PeerScope::Namespace, PeerScope::Mesh] {
        if let Some(p) = pick(scope) {
            let mode = p.port_modes.get(&port).copied().unwrap_or(p.mode);
            if mode != MtlsMode::Unset {
                return mode;
            }
        }
    }
    MtlsMode::Permissive
}
