//! `/config_dump` in Istio's ztunnel shape, so that `istioctl ztunnel-config workloads |
//! services | policies | certificates` and scripts written for Istio's ztunnel read ours:
//! camelCase keys, `workloadIps`, `vips` as `network/ip`, `ports` and `endpoints` as maps,
//! policy rules as rules → clauses → matches with `{"Exact": ..}` string matches, and
//! certificates with `certChain`/`rootCerts` (base64 of the PEM, decimal serial, RFC 3339
//! times). `workloadState` lists the pods this ztunnel serves. amesh adds `node` and `pods`.

use crate::state::{
    LocalityScope, Protocol, Service, State, Waypoint, WaypointDestination, Workload,
};
use amesh_identity::{CertInfo, CertState, WorkloadCert};
use amesh_policy::{Action, Authorization, Match, Scope, ServiceAccountMatch, StringMatch};
use serde_json::{Map, Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// A pod this ztunnel serves, for `workloadState`.
#[derive(Clone, Debug)]
pub struct ServedPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub trust_domain: String,
    pub service_account: String,
}

/// The whole dump.
pub fn config_dump(node: &str, state: &State, certs: Vec<CertInfo>, pods: &[ServedPod]) -> Value {
    let mut workloads: Vec<&Workload> = state.workloads().map(|w| w.as_ref()).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<&Service> = state.services().map(|s| s.as_ref()).collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let mut policies: Vec<&Authorization> = state.policies().map(|p| p.as_ref()).collect();
    policies.sort_by_key(|p| p.key());
    let mut certs = certs;
    certs.sort_by_key(|c| c.identity.to_string());
    let workload_state: Map<String, Value> = pods
        .iter()
        .map(|p| {
            let info = json!({
                "state": "Up",
                "info": {
                    "name": p.name,
                    "namespace": p.namespace,
                    "trustDomain": p.trust_domain,
                    "serviceAccount": p.service_account,
                },
            });
            (p.uid.clone(), info)
        })
        .collect();
    json!({
        "workloads": workloads.iter().map(|w| workload(w)).collect::<Vec<_>>(),
        "services": services.iter().map(|s| service(s, &workloads)).collect::<Vec<_>>(),
        "policies": policies.iter().map(|p| policy(p)).collect::<Vec<_>>(),
        "certificates": certs.iter().map(certificate).collect::<Vec<_>>(),
        "workloadState": workload_state,
        "node": node,
        "pods": pods.iter().map(|p| p.uid.as_str()).collect::<Vec<_>>(),
    })
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Hbone => "HBONE",
        Protocol::Tcp => "TCP",
    }
}

fn health(healthy: bool) -> &'static str {
    if healthy { "Healthy" } else { "Unhealthy" }
}

/// Istio leaves empty strings and lists out.
fn put(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.to_string(), value.into());
    }
}

/// Istio's `GatewayAddress` as its dump writes it: `namespace/hostname` or `network/ip`.
fn waypoint(wp: &Waypoint, network: &str) -> Value {
    let destination = match &wp.destination {
        WaypointDestination::Hostname {
            namespace,
            hostname,
        } => format!("{namespace}/{hostname}"),
        WaypointDestination::Address(ip) => format!("{network}/{ip}"),
    };
    json!({ "destination": destination, "hboneMtlsPort": wp.port })
}

fn workload(w: &Workload) -> Value {
    let t = &w.telemetry;
    let mut m = Map::new();
    m.insert(
        "workloadIps".into(),
        w.addresses.iter().map(|a| a.to_string()).collect(),
    );
    m.insert("protocol".into(), protocol(w.protocol).into());
    put(&mut m, "uid", &w.uid);
    m.insert("name".into(), w.name.clone().into());
    m.insert("namespace".into(), w.namespace.clone().into());
    put(&mut m, "trustDomain", &w.trust_domain);
    put(&mut m, "serviceAccount", &w.service_account);
    put(&mut m, "workloadName", &t.workload_name);
    put(&mut m, "workloadType", &t.workload_kind);
    put(&mut m, "canonicalName", &t.canonical_name);
    put(&mut m, "canonicalRevision", &t.canonical_revision);
    put(&mut m, "node", &w.node);
    put(&mut m, "network", &w.network);
    if !w.authorization_policies.is_empty() {
        m.insert(
            "authorizationPolicies".into(),
            w.authorization_policies.clone().into(),
        );
    }
    if let Some(t) = w.proxy_protocol {
        let mut tunnel = json!({ "protocol": "PROXY" });
        if let Some(port) = t.port {
            tunnel["port"] = port.into();
        }
        m.insert("applicationTunnel".into(), tunnel);
    }
    if let Some(wp) = &w.waypoint {
        m.insert("waypoint".into(), waypoint(wp, &w.network));
    }
    m.insert("status".into(), health(w.healthy).into());
    m.insert("clusterId".into(), t.cluster_id.clone().into());
    let l = &w.locality;
    if !(l.region.is_empty() && l.zone.is_empty() && l.subzone.is_empty()) {
        let mut loc = Map::new();
        put(&mut loc, "region", &l.region);
        put(&mut loc, "zone", &l.zone);
        put(&mut loc, "subzone", &l.subzone);
        m.insert("locality".into(), loc.into());
    }
    if !w.services.is_empty() {
        m.insert(
            "services".into(),
            w.services.keys().cloned().collect::<Vec<_>>().into(),
        );
    }
    m.insert("capacity".into(), 1.into());
    m.into()
}

fn scope(s: LocalityScope) -> &'static str {
    match s {
        LocalityScope::Region => "Region",
        LocalityScope::Zone => "Zone",
        LocalityScope::Subzone => "Subzone",
        LocalityScope::Node => "Node",
    }
}

fn service(s: &Service, workloads: &[&Workload]) -> Value {
    let key = s.key();
    let ports: Map<String, Value> = s
        .ports
        .iter()
        .map(|(p, t)| (p.to_string(), (*t).into()))
        .collect();
    let endpoints: Map<String, Value> = workloads
        .iter()
        .filter_map(|w| Some((w, w.services.get(&key)?)))
        .map(|(w, map)| {
            let port: Map<String, Value> = map
                .iter()
                .map(|(p, t)| (p.to_string(), (*t).into()))
                .collect();
            let e = json!({
                "workloadUid": w.uid,
                "service": key,
                "port": port,
                "status": health(w.healthy),
            });
            (w.uid.clone(), e)
        })
        .collect();
    let families = match (
        s.vips.iter().any(|v| v.is_ipv4()),
        s.vips.iter().any(|v| v.is_ipv6()),
    ) {
        (true, true) => "Dual",
        (false, true) => "IPv6",
        _ => "IPv4",
    };
    let mut m = json!({
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": s.vips.iter().map(|v| format!("/{v}")).collect::<Vec<_>>(),
        "ports": ports,
        "endpoints": endpoints,
        "subjectAltNames": s.subject_alt_names.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "ipFamilies": families,
    });
    if let Some(wp) = &s.waypoint {
        m["waypoint"] = waypoint(wp, "");
    }
    let lb = &s.load_balancing;
    if !lb.prefer.is_empty() || lb.strict || lb.passthrough || lb.allow_unhealthy {
        let mode = match (lb.passthrough, lb.strict) {
            (true, _) => "Passthrough",
            (false, true) => "Strict",
            (false, false) => "Failover",
        };
        m["loadBalancer"] = json!({
            "routingPreferences": lb.prefer.iter().map(|p| scope(*p)).collect::<Vec<_>>(),
            "mode": mode,
            "healthPolicy": if lb.allow_unhealthy { "AllowAll" } else { "OnlyHealthy" },
        });
    }
    m
}

fn string_matches(v: &[StringMatch]) -> Value {
    v.iter()
        .map(|s| match s {
            StringMatch::Exact(x) => json!({ "Exact": x }),
            StringMatch::Prefix(x) => json!({ "Prefix": x }),
            StringMatch::Suffix(x) => json!({ "Suffix": x }),
            StringMatch::Presence => json!({ "Presence": {} }),
        })
        .collect()
}

fn accounts(v: &[ServiceAccountMatch]) -> Value {
    v.iter()
        .map(|a| json!({ "namespace": a.namespace, "serviceAccount": a.service_account }))
        .collect()
}

/// One match as Istio's `RbacMatch` serializes: camelCase keys, empty lists left out.
fn one_match(m: &Match) -> Value {
    let mut out = Map::new();
    let mut put_list = |key: &str, value: Value| {
        if value.as_array().is_some_and(|a| !a.is_empty()) {
            out.insert(key.to_string(), value);
        }
    };
    let nets = |v: &[amesh_policy::IpNet]| -> Value {
        v.iter()
            .map(|n| format!("{}/{}", n.addr, n.prefix))
            .collect()
    };
    for (key, v) in [
        ("namespaces", &m.namespaces),
        ("notNamespaces", &m.not_namespaces),
        ("principals", &m.principals),
        ("notPrincipals", &m.not_principals),
    ] {
        put_list(key, string_matches(v));
    }
    for (key, v) in [
        ("serviceAccounts", &m.service_accounts),
        ("notServiceAccounts", &m.not_service_accounts),
    ] {
        put_list(key, accounts(v));
    }
    for (key, v) in [
        ("sourceIps", &m.source_ips),
        ("notSourceIps", &m.not_source_ips),
        ("destinationIps", &m.destination_ips),
        ("notDestinationIps", &m.not_destination_ips),
    ] {
        put_list(key, nets(v));
    }
    for (key, v) in [
        ("destinationPorts", &m.destination_ports),
        ("notDestinationPorts", &m.not_destination_ports),
    ] {
        put_list(key, v.clone().into());
    }
    out.into()
}

fn policy(p: &Authorization) -> Value {
    let rules: Vec<Vec<Vec<Value>>> = p
        .rules
        .iter()
        .map(|r| {
            r.clauses
                .iter()
                .map(|c| c.matches.iter().map(one_match).collect())
                .collect()
        })
        .collect();
    json!({
        "name": p.name,
        "namespace": p.namespace,
        "scope": match p.scope {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
        },
        "action": match p.action {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Audit => "Audit",
            Action::Custom => "Custom",
        },
        "rules": rules,
        "dryRun": p.dry_run,
    })
}

fn certificate(c: &CertInfo) -> Value {
    let (state, chain, roots) = match (&c.state, &c.cert) {
        (CertState::Ready, Some(cert)) => {
            let (chain, roots) = chain_parts(cert);
            ("Available".to_string(), chain, roots)
        }
        (CertState::Expired, _) => ("Unavailable: expired".into(), vec![], vec![]),
        (_, _) => match &c.last_error {
            Some(e) => (format!("Unavailable: {e}"), vec![], vec![]),
            None => ("Initializing".into(), vec![], vec![]),
        },
    };
    json!({
        "identity": c.identity.to_string(),
        "state": state,
        "certChain": chain,
        "rootCerts": roots,
        // amesh's own: when the certificate expires and is renewed (seconds since the epoch)
        // and the last error fetching it.
        "expiry": c.not_after.map(secs),
        "renewAt": c.renew_at.map(secs),
        "lastError": c.last_error,
    })
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The certificate and intermediates, and the roots (self-issued), as Istio lists them.
fn chain_parts(cert: &WorkloadCert) -> (Vec<Value>, Vec<Value>) {
    use base64::Engine as _;
    let (mut chain, mut roots) = (Vec::new(), Vec::new());
    for der in &cert.chain {
        let Ok((_, x)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        let entry = json!({
            "pem": base64::engine::general_purpose::STANDARD.encode(pem),
            "serialNumber": x.tbs_certificate.serial.to_string(),
            "validFrom": rfc3339(x.validity().not_before.timestamp()),
            "expirationTime": rfc3339(x.validity().not_after.timestamp()),
        });
        if x.subject() == x.issuer() && !chain.is_empty() {
            roots.push(entry);
        } else {
            chain.push(entry);
        }
    }
    (chain, roots)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, as Istio's dump writes times.
fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_policy::{Clause, IpNet, Rule};

    #[test]
    fn policies_are_rules_of_clauses_of_matches_as_istio_dumps_them() {
        let p = Authorization {
            name: "allow-a".into(),
            namespace: "ns-c".into(),
            scope: Scope::WorkloadSelector,
            action: Action::Allow,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        principals: vec![StringMatch::Exact("cluster.local/ns/ns-a/sa/a".into())],
                        not_namespaces: vec![StringMatch::Prefix("kube-".into())],
                        source_ips: vec![IpNet::parse("10.0.0.0/8").unwrap()],
                        destination_ports: vec![8080],
                        service_accounts: vec![ServiceAccountMatch {
                            namespace: "ns-a".into(),
                            service_account: "a".into(),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            dry_run: false,
        };
        assert_eq!(
            policy(&p),
            json!({
                "name": "allow-a",
                "namespace": "ns-c",
                "scope": "WorkloadSelector",
                "action": "Allow",
                "rules": [[[{
                    "principals": [{"Exact": "cluster.local/ns/ns-a/sa/a"}],
                    "notNamespaces": [{"Prefix": "kube-"}],
                    "serviceAccounts": [{"namespace": "ns-a", "serviceAccount": "a"}],
                    "sourceIps": ["10.0.0.0/8"],
                    "destinationPorts": [8080],
                }]]],
                "dryRun": false,
            })
        );
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_256_000), "2026-12-03T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
