//! Deciding one connection against the policies that apply to its destination workload, as
//! Istio orders it: any matching DENY refuses; otherwise, if any ALLOW policy applies and none
//! matches, refuse; otherwise allow. Dry-run and AUDIT policies are evaluated and reported but
//! never change the outcome.
//!
//! At a waypoint the same rules judge a request with its HTTP attributes
//! ([`evaluate_request`]); a connection relayed as TCP there has no request, and is judged
//! as ztunnel judges one: an ALLOW rule that needs HTTP matches nothing, a DENY rule is
//! matched on its L4 part.

use crate::{
    l7::Request,
    model::{Action, Authorization, Clause, Match, Rule},
};
use amesh_identity::Identity;
use std::net::IpAddr;

/// What the destination ztunnel knows about a connection at L4.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// From the peer's certificate; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// The outcome, with the policy that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `by` names the ALLOW policy that matched, if any applied.
    Allow { by: Option<String> },
    /// Refused by a matching DENY policy, or because ALLOW policies apply and none matched.
    Deny { by: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// A decision and the dry-run policies that would have decided differently... or at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// Dry-run policies whose rules matched (`namespace/name`, action).
    pub dry_run_hits: Vec<(String, Action)>,
    /// AUDIT policies whose rules matched (`namespace/name`).
    pub audit_hits: Vec<String>,
    /// CUSTOM policies whose rules matched: the request goes to their authorizer first.
    pub custom_hits: Vec<String>,
}

/// Evaluates `policies` (those that apply to the destination) for `conn`.
pub fn evaluate(policies: &[&Authorization], conn: &Connection<'_>) -> Outcome {
    decide(policies, conn, None)
}

/// Evaluates `policies` for a request at a waypoint (`request`), or for a connection it
/// relays as TCP (`None`).
pub fn evaluate_request(
    policies: &[&Authorization],
    conn: &Connection<'_>,
    request: Option<&Request<'_>>,
) -> Outcome {
    decide(policies, conn, Some(request))
}

/// `request`: `None` at ztunnel (no HTTP part exists); `Some(None)` for TCP at a waypoint.
fn decide(
    policies: &[&Authorization],
    conn: &Connection<'_>,
    request: Option<Option<&Request<'_>>>,
) -> Outcome {
    let principal = conn.source.map(Identity::principal);
    let mut dry_run_hits = Vec::new();
    let mut audit_hits = Vec::new();
    let mut custom_hits = Vec::new();
    let mut deny = None;
    let (mut allow_applies, mut allowed_by) = (false, None);
    for p in policies {
        let peer = Peer {
            conn,
            principal: principal.as_deref(),
            request,
            action: p.action,
        };
        let hit = policy_matches(p, &peer);
        if p.dry_run {
            if hit {
                dry_run_hits.push((p.key(), p.action));
            }
            continue;
        }
        match p.action {
            Action::Audit if hit => audit_hits.push(p.key()),
            Action::Custom if hit => custom_hits.push(p.key()),
            Action::Deny if hit && deny.is_none() => deny = Some(p.key()),
            Action::Allow => {
                allow_applies = true;
                if hit && allowed_by.is_none() {
                    allowed_by = Some(p.key());
                }
            }
            _ => {}
        }
    }
    let decision = match (deny, allow_applies, allowed_by) {
        (Some(by), _, _) => Decision::Deny { by },
        (None, true, None) => Decision::Deny {
            by: "no ALLOW policy matched".to_string(),
        },
        (None, _, by) => Decision::Allow { by },
    };
    Outcome {
        decision,
        dry_run_hits,
        audit_hits,
        custom_hits,
    }
}

/// The connection with its principal worked out once per decision, and the request.
struct Peer<'a> {
    conn: &'a Connection<'a>,
    principal: Option<&'a str>,
    request: Option<Option<&'a Request<'a>>>,
    action: Action,
}

fn policy_matches(p: &Authorization, peer: &Peer<'_>) -> bool {
    p.rules.iter().any(|r| rule_matches(r, peer))
}

fn rule_matches(r: &Rule, peer: &Peer<'_>) -> bool {
    // TCP at a waypoint: an ALLOW (or AUDIT, CUSTOM) rule that needs HTTP anywhere is left
    // out whole, as istiod drops it (a DENY rule keeps its L4 part).
    if matches!(peer.request, Some(None))
        && peer.action != Action::Deny
        && r.clauses
            .iter()
            .any(|c| c.matches.iter().any(|m| !m.http.is_empty()))
    {
        return false;
    }
    r.clauses.iter().all(|c| clause_matches(c, peer))
}

fn clause_matches(c: &Clause, peer: &Peer<'_>) -> bool {
    c.matches.iter().any(|m| match_matches(m, peer))
}

/// All of a list, or true when the list is empty.
fn any_or_empty<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

fn match_matches(m: &Match, peer: &Peer<'_>) -> bool {
    let conn = peer.conn;
    // Without an identity (plaintext), positive identity conditions never match and negative
    // ones always hold: `notPrincipals: ["*"]` is Istio's way to say "peers without mTLS".
    let identity_ok = match (conn.source, peer.principal) {
        (Some(id), Some(principal)) => {
            let ns = id.namespace.as_str();
            let sa_is = |sa: &crate::model::ServiceAccountMatch| {
                sa.namespace == id.namespace && sa.service_account == id.service_account
            };
            any_or_empty(&m.principals, |s| s.matches(principal))
                && !m.not_principals.iter().any(|s| s.matches(principal))
                && any_or_empty(&m.namespaces, |s| s.matches(ns))
                && !m.not_namespaces.iter().any(|s| s.matches(ns))
                && any_or_empty(&m.service_accounts, sa_is)
                && !m.not_service_accounts.iter().any(sa_is)
        }
        _ => m.principals.is_empty() && m.namespaces.is_empty() && m.service_accounts.is_empty(),
    };
    let http_ok = match peer.request {
        // At ztunnel: policies carry no HTTP part.
        None => true,
        Some(Some(r)) => m.http.matches(r),
        // TCP at a waypoint: an ALLOW needing HTTP allows nothing; a DENY keeps its L4 part.
        Some(None) => m.http.is_empty() || peer.action == Action::Deny,
    };
    identity_ok
        && http_ok
        && any_or_empty(&m.source_ips, |n| n.contains(conn.source_ip))
        && !m.not_source_ips.iter().any(|n| n.contains(conn.source_ip))
        && any_or_empty(&m.destination_ips, |n| n.contains(conn.destination_ip))
        && !m
            .not_destination_ips
            .iter()
            .any(|n| n.contains(conn.destination_ip))
        && any_or_empty(&m.destination_ports, |p| *p == conn.destination_port)
        && !m.not_destination_ports.contains(&conn.destination_port)
}
