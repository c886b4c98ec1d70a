//! Authorization policies in the wire form ztunnel receives (`istio.security.Authorization`)
//! and back. The control plane encodes with [`to_proto`]; ztunnel decodes every policy, from
//! the xDS feed or from its local file, with [`from_proto`], so both sources are judged by the
//! same conversion.

use crate::model::{
    Action, Authorization, Clause, IpNet, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use amesh_proto::security as sec;
use std::net::IpAddr;

/// Why a wire policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown scope {0}")]
    UnknownScope(i32),
    #[error("action {0} is not supported at L4")]
    UnsupportedAction(i32),
    #[error("address has {0} bytes (an address has 4 or 16)")]
    AddressLength(usize),
    #[error("prefix length {length} for {addr}")]
    PrefixLength { addr: IpAddr, length: u32 },
    #[error("destination port {0} is not a port")]
    Port(u32),
}

/// An address in its wire form (4 or 16 bytes).
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// An address from its wire form.
pub fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, WireError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes)
        .map(IpAddr::from)
        .map_err(|_| WireError::AddressLength(bytes.len()))
}

/// The model in the wire form ztunnel receives.
pub fn to_proto(p: &Authorization) -> sec::Authorization {
    let groups = p
        .rules
        .iter()
        .map(|r| sec::Group {
            rules: r
                .clauses
                .iter()
                .map(|c| sec::Rules {
                    matches: c.matches.iter().map(match_to_proto).collect(),
                })
                .collect(),
        })
        .collect();
    sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            Scope::Global => sec::Scope::Global,
            Scope::Namespace => sec::Scope::Namespace,
            Scope::WorkloadSelector => sec::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            Action::Allow | Action::Audit | Action::Custom => sec::Action::Allow,
            Action::Deny => sec::Action::Deny,
        } as i32,
        groups,
        // AUDIT never changes an outcome: a dry run (CUSTOM never reaches ztunnel).
        dry_run: p.dry_run || matches!(p.action, Action::Audit | Action::Custom),
        extensions: vec![],
    }
}

/// A string pattern in its wire form.
pub fn string_match(s: &StringMatch) -> sec::StringMatch {
    use sec::string_match::MatchType;
    sec::StringMatch {
        match_type: Some(match s {
            StringMatch::Exact(x) => MatchType::Exact(x.clone()),
            StringMatch::Prefix(x) => MatchType::Prefix(x.clone()),
            StringMatch::Suffix(x) => MatchType::Suffix(x.clone()),
            StringMatch::Presence => MatchType::Presence(()),
        }),
    }
}

/// An address block in its wire form.
pub fn address(n: &IpNet) -> sec::Address {
    sec::Address {
        address: ip_bytes(n.addr),
        length: u32::from(n.prefix),
    }
}

fn match_to_proto(m: &Match) -> sec::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match).collect();
    let nets = |v: &[IpNet]| v.iter().map(address).collect();
    let accounts = |v: &[ServiceAccountMatch]| -> Vec<sec::ServiceAccountMatch> {
        v.iter()
            .map(|a| sec::ServiceAccountMatch {
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    sec::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        // HTTP attributes never reach ztunnel (see `crd`): nothing needs a private marker.
        extensions: vec![],
    }
}

/// The wire form as the model ztunnel evaluates.
pub fn from_proto(a: sec::Authorization) -> Result<Authorization, WireError> {
    let scope = match sec::Scope::try_from(a.scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(WireError::UnknownScope(a.scope)),
    };
    let action = match sec::Action::try_from(a.action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(WireError::UnsupportedAction(a.action)),
    };
    let mut rules = Vec::with_capacity(a.groups.len());
    for g in &a.groups {
        let clauses = g
            .rules
            .iter()
            .map(|r| {
                r.matches
                    .iter()
                    .map(match_from_proto)
                    .collect::<Result<Vec<_>, _>>()
                    .map(|matches| Clause { matches })
            })
            .collect::<Result<_, _>>()?;
        rules.push(Rule { clauses });
    }
    Ok(Authorization {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

fn match_from_proto(m: &sec::Match) -> Result<Match, WireError> {
    use sec::string_match::MatchType;
    let strings = |v: &[sec::StringMatch]| -> Vec<StringMatch> {
        v.iter()
            .filter_map(|m| match m.match_type.as_ref()? {
                MatchType::Exact(s) => Some(StringMatch::Exact(s.clone())),
                MatchType::Prefix(s) => Some(StringMatch::Prefix(s.clone())),
                MatchType::Suffix(s) => Some(StringMatch::Suffix(s.clone())),
                MatchType::Presence(_) => Some(StringMatch::Presence),
            })
            .collect()
    };
    let nets = |v: &[sec::Address]| -> Result<Vec<IpNet>, WireError> {
        v.iter()
            .map(|a| {
                let addr = ip_from_bytes(&a.address)?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = u8::try_from(a.length).ok().filter(|l| *l <= max).ok_or(
                    WireError::PrefixLength {
                        addr,
                        length: a.length,
                    },
                )?;
                Ok(IpNet { addr, prefix })
            })
            .collect()
    };
    let ports = |v: &[u32]| -> Result<Vec<u16>, WireError> {
        v.iter()
            .map(|p| u16::try_from(*p).map_err(|_| WireError::Port(*p)))
            .collect()
    };
    let accounts = |v: &[sec::ServiceAccountMatch]| -> Vec<ServiceAccountMatch> {
        v.iter()
            .map(|a| ServiceAccountMatch {
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
            })
            .collect()
    };
    Ok(Match {
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        source_ips: nets(&m.source_ips)?,
        not_source_ips: nets(&m.not_source_ips)?,
        destination_ips: nets(&m.destination_ips)?,
        not_destination_ips: nets(&m.not_destination_ips)?,
        destination_ports: ports(&m.destination_ports)?,
        not_destination_ports: ports(&m.not_destination_ports)?,
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        // The wire form is ztunnel's: no HTTP attributes.
        http: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field survives the round trip the control plane and ztunnel make.
    #[test]
    fn a_policy_survives_the_wire_both_ways() {
        let m = Match {
            principals: vec![StringMatch::Prefix("cluster.local/ns/a".into())],
            not_principals: vec![StringMatch::Presence],
            namespaces: vec![StringMatch::Exact("a".into())],
            not_namespaces: vec![StringMatch::Suffix("-test".into())],
            source_ips: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            not_source_ips: vec![IpNet::parse("fd00::1").unwrap()],
            destination_ips: vec![IpNet::parse("10.1.0.0/16").unwrap()],
            not_destination_ips: vec![IpNet::parse("10.1.2.3").unwrap()],
            destination_ports: vec![8080],
            not_destination_ports: vec![9090],
            service_accounts: vec![ServiceAccountMatch {
                namespace: "a".into(),
                service_account: "sa".into(),
            }],
            not_service_accounts: vec![],
            http: Default::default(),
        };
        let p = Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: Scope::WorkloadSelector,
            action: Action::Deny,
            rules: vec![Rule {
                clauses: vec![Clause { matches: vec![m] }],
            }],
            dry_run: true,
        };
        assert_eq!(from_proto(to_proto(&p)), Ok(p));
    }

    #[test]
    fn malformed_wire_policies_are_refused_with_the_reason() {
        let base = sec::Authorization {
            name: "p".into(),
            ..Default::default()
        };
        let with_match = |m: sec::Match| sec::Authorization {
            groups: vec![sec::Group {
                rules: vec![sec::Rules { matches: vec![m] }],
            }],
            ..base.clone()
        };
        let cases = [
            (
                sec::Authorization {
                    scope: 9,
                    ..base.clone()
                },
                "unknown scope 9",
            ),
            (
                sec::Authorization {
                    action: 2,
                    ..base.clone()
                },
                "action 2 is not supported at L4",
            ),
            (
                with_match(sec::Match {
                    source_ips: vec![sec::Address {
                        address: vec![10, 0, 0, 0],
                        length: 40,
                    }],
                    ..Default::default()
                }),
                "prefix length 40 for 10.0.0.0",
            ),
            (
                with_match(sec::Match {
                    destination_ips: vec![sec::Address {
                        address: vec![1, 2, 3],
                        length: 8,
                    }],
                    ..Default::default()
                }),
                "address has 3 bytes (an address has 4 or 16)",
            ),
            (
                with_match(sec::Match {
                    destination_ports: vec![70000],
                    ..Default::default()
                }),
                "destination port 70000 is not a port",
            ),
        ];
        for (wire, reason) in cases {
            assert_eq!(from_proto(wire).unwrap_err().to_string(), reason);
        }
    }
}
