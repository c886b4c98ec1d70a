//! Authorization policies as ztunnel receives them (the shape of Istio's
//! `istio.security.Authorization`): a policy matches when any of its rules matches; a rule
//! matches when all of its clauses match; a clause matches when any of its matches does; a
//! match matches when every field it sets matches (positive fields: any value; `not_`
//! fields: none).

use std::net::IpAddr;

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    /// Every workload in the mesh (a policy in the root namespace without a selector).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that list the policy (`namespace/name`) in their
    /// `authorization_policies`.
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Istio's AUDIT: a match is logged and counted, never changes the outcome (at L4 it
    /// travels as a dry-run ALLOW, which means the same).
    Audit,
    /// Istio's CUSTOM: a match sends the request to an external authorizer, whose answer
    /// comes before DENY and ALLOW (waypoints only; refused at L4).
    Custom,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// OR of rules. A policy with no rules never matches (Istio: an ALLOW policy with no
    /// rules allows nothing).
    pub rules: Vec<Rule>,
    /// Only log and count what it would decide.
    pub dry_run: bool,
}

impl Authorization {
    /// `namespace/name`, how workloads reference it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// AND of clauses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// OR of matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// AND of the fields that are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Match {
    /// Peer identities without `spiffe://` (`td/ns/<ns>/sa/<sa>`).
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    /// The peer identity's namespace.
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    /// The peer identity's (namespace, service account).
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// What only a waypoint can judge (empty for every policy ztunnel enforces).
    #[serde(skip_serializing_if = "crate::l7::HttpMatch::is_empty")]
    pub http: crate::l7::HttpMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any value, as long as there is one.
    Presence,
}

impl StringMatch {
    /// Istio's string syntax: `*` presence, `x*` prefix, `*x` suffix, else exact.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Presence
        } else if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_string())
        } else {
            Self::Exact(s.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// An address block (`10.0.0.0/8`, `fd00::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Parses `ip` or `ip/len`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = len.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
