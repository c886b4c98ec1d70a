//! The policy sections of the local configuration file.
//!
//! ```yaml
//! policies:                      # in the shape ztunnel receives (Istio's Authorization)
//! - name: allow-client
//!   namespace: shop
//!   scope: WorkloadSelector      # Global | Namespace | WorkloadSelector
//!   action: Allow                # Allow | Deny
//!   dryRun: false
//!   rules:                       # any rule
//!   - clauses:                   # all clauses
//!     - matches:                 # any match; every field set must hold
//!       - principals: ["cluster.local/ns/shop/sa/client"]   # "*", "x*", "*x" work
//!         destinationPorts: [8080]
//! peerAuthentications:
//! - name: default
//!   namespace: istio-system
//!   scope: Mesh                  # Mesh | Namespace | Workload (then `workloads: [uid]`)
//!   mode: STRICT                 # STRICT | PERMISSIVE | UNSET (DISABLE is ignored)
//!   portLevelMtls: {8080: PERMISSIVE}
//! ```
//! Workloads opt into `WorkloadSelector` policies with `authorizationPolicies: [shop/name]`.

use amesh_policy::{
    Action, Authorization, Clause, IpNet, Match, MtlsMode, PeerAuthentication, PeerScope, Rule,
    Scope, ServiceAccountMatch, StringMatch,
};
use serde::Deserialize;
use std::collections::BTreeMap;

type FieldError = (String, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPolicy {
    name: String,
    namespace: String,
    scope: String,
    action: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    clauses: Vec<RawClause>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClause {
    #[serde(default)]
    matches: Vec<RawMatch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    source_ips: Vec<String>,
    #[serde(default)]
    not_source_ips: Vec<String>,
    #[serde(default)]
    destination_ips: Vec<String>,
    #[serde(default)]
    not_destination_ips: Vec<String>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<RawServiceAccount>,
    #[serde(default)]
    not_service_accounts: Vec<RawServiceAccount>,
    #[serde(default, rename = "requiresL7")]
    requires_l7: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceAccount {
    namespace: String,
    service_account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPeerAuthentication {
    name: String,
    namespace: String,
    scope: String,
    #[serde(default)]
    workloads: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    port_level_mtls: BTreeMap<u16, String>,
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| StringMatch::parse(s)).collect()
}

fn nets(v: &[String], at: &str) -> Result<Vec<IpNet>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            IpNet::parse(s).ok_or_else(|| {
                (
                    format!("{at}[{i}]"),
                    format!("{s:?} is not an address or CIDR block"),
                )
            })
        })
        .collect()
}

fn accounts(v: &[RawServiceAccount]) -> Vec<ServiceAccountMatch> {
    v.iter()
        .map(|a| ServiceAccountMatch {
            namespace: a.namespace.clone(),
            service_account: a.service_account.clone(),
        })
        .collect()
}

fn one_match(m: &RawMatch, at: &str) -> Result<Match, FieldError> {
    Ok(Match {
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        source_ips: nets(&m.source_ips, &format!("{at}.sourceIps"))?,
        not_source_ips: nets(&m.not_source_ips, &format!("{at}.notSourceIps"))?,
        destination_ips: nets(&m.destination_ips, &format!("{at}.destinationIps"))?,
        not_destination_ips: nets(&m.not_destination_ips, &format!("{at}.notDestinationIps"))?,
        destination_ports: m.destination_ports.clone(),
        not_destination_ports: m.not_destination_ports.clone(),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        requires_l7: m.requires_l7,
    })
}

pub(super) fn policy(p: RawPolicy, at: &str) -> Result<Authorization, FieldError> {
    let scope = match p.scope.as_str() {
        "Global" => Scope::Global,
        "Namespace" => Scope::Namespace,
        "WorkloadSelector" => Scope::WorkloadSelector,
        other => {
            return Err((
                format!("{at}.scope"),
                format!("{other:?} is not Global, Namespace or WorkloadSelector"),
            ));
        }
    };
    let action = match p.action.as_str() {
        "Allow" | "ALLOW" => Action::Allow,
        "Deny" | "DENY" => Action::Deny,
        other => {
            return Err((
                format!("{at}.action"),
                format!("{other:?} is not supported at L4 (Allow or Deny)"),
            ));
        }
    };
    let mut rules = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        let mut clauses = Vec::new();
        for (j, c) in r.clauses.iter().enumerate() {
            let matches = c
                .matches
                .iter()
                .enumerate()
                .map(|(k, m)| one_match(m, &format!("{at}.rules[{i}].clauses[{j}].matches[{k}]")))
                .collect::<Result<_, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        rules,
        dry_run: p.dry_run,
    })
}

fn mode(s: &str, at: &str) -> Result<MtlsMode, FieldError> {
    match s {
        "STRICT" => Ok(MtlsMode::Strict),
        "PERMISSIVE" => Ok(MtlsMode::Permissive),
        // HBONE is always mutual TLS: DISABLE has no meaning at ztunnel, as in Istio.
        "UNSET" | "DISABLE" => Ok(MtlsMode::Unset),
        other => Err((
            at.to_string(),
            format!("{other:?} is not STRICT, PERMISSIVE, UNSET or DISABLE"),
        )),
    }
}

pub(super) fn peer_authentication(
    p: RawPeerAuthentication,
    at: &str,
) -> Result<PeerAuthentication, FieldError> {
    let scope = match p.scope.as_str() {
        "Mesh" => PeerScope::Mesh,
        "Namespace" => PeerScope::Namespace,
        "Workload" => PeerScope::Workload,
        other => {
            return Err((
                format!("{at}.scope"),
                format!("{other:?} is not Mesh, Namespace or Workload"),
            ));
        }
    };
    let mut port_modes = BTreeMap::new();
    for (port, m) in &p.port_level_mtls {
        port_modes.insert(*port, mode(m, &format!("{at}.portLevelMtls.{port}"))?);
    }
    Ok(PeerAuthentication {
        name: p.name,
        namespace: p.namespace,
        scope,
        workloads: p.workloads,
        mode: mode(p.mode.as_deref().unwrap_or("UNSET"), &format!("{at}.mode"))?,
        port_modes,
    })
}
