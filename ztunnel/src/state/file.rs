//! The local configuration file: workloads and services in the shape of Istio's workload API.
//!
//! ```yaml
//! workloads:
//! - uid: cluster1//v1/Pod/shop/cart-0
//!   name: cart-0
//!   namespace: shop
//!   serviceAccount: cart          # default "default"
//!   trustDomain: cluster.local    # default "cluster.local"
//!   addresses: [10.200.0.2, "fd00:200::2"]
//!   protocol: HBONE               # HBONE (default) or TCP
//!   node: node-1
//!   status: Healthy               # Healthy (default) or Unhealthy
//!   locality: {region: r1, zone: z1}  # optional
//!   services:
//!     shop/cart.shop.svc.cluster.local: {80: 8080}
//! services:
//! - name: cart
//!   namespace: shop
//!   hostname: cart.shop.svc.cluster.local
//!   vips: [10.96.0.10]
//!   ports: {80: 8080}
//!   loadBalancing: {routingPreference: [Zone, Node], mode: Failover}   # optional
//! ```
//!
//! A file that does not parse or validate is rejected as a whole with the file, the field and
//! the reason; the previous good state stays.

use super::{
    LoadBalancing, Locality, LocalityScope, Protocol, Service, State, StateStore, Workload,
};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};
use tracing::{error, info};

/// A rejected configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConfig {
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    policies: Vec<super::policy_file::RawPolicy>,
    #[serde(default)]
    peer_authentications: Vec<super::policy_file::RawPeerAuthentication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWorkload {
    uid: String,
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    locality: RawLocality,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    load_balancing: Option<RawLoadBalancing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLoadBalancing {
    #[serde(default)]
    routing_preference: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
}

/// Largest configuration file read.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and validates the file.
pub fn load_file(path: &Path) -> Result<State, ConfigError> {
    let err = |field: &str, reason: String| ConfigError {
        file: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    // Only a regular file, opened non-blocking (a FIFO must not wedge the reload), bounded.
    let bytes = amesh_sys::file::read_regular(path, MAX_FILE_BYTES)
        .map_err(|e| err("(file)", e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        err(&format!("line {line}"), "not UTF-8".into())
    })?;
    let raw: FileConfig = serde_yaml::from_str(&text).map_err(|e| {
        let field = e.location().map_or_else(
            || "(document)".to_string(),
            |l| format!("line {} column {}", l.line(), l.column()),
        );
        err(&field, e.to_string())
    })?;
    let mut uids = HashSet::new();
    let mut ips = HashSet::new();
    let mut workloads = Vec::new();
    for (i, w) in raw.workloads.into_iter().enumerate() {
        let at = format!("workloads[{i}]");
        let w = workload(w, &at).map_err(|(f, r)| err(&f, r))?;
        if !uids.insert(w.uid.clone()) {
            return Err(err(
                &format!("{at}.uid"),
                format!("{:?} appears twice", w.uid),
            ));
        }
        for ip in &w.addresses {
            if !ips.insert(*ip) {
                return Err(err(
                    &format!("{at}.addresses"),
                    format!("{ip} belongs to another workload too"),
                ));
            }
        }
        workloads.push(w);
    }
    let mut services = Vec::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        services.push(service(s, &format!("services[{i}]")).map_err(|(f, r)| err(&f, r))?);
    }
    let mut policies = Vec::new();
    for (i, p) in raw.policies.into_iter().enumerate() {
        policies.push(
            super::policy_file::policy(p, &format!("policies[{i}]"))
                .map_err(|(f, r)| err(&f, r))?,
        );
    }
    let mut peer_auths = Vec::new();
    for (i, p) in raw.peer_authentications.into_iter().enumerate() {
        let at = format!("peerAuthentications[{i}]");
        peer_auths
            .push(super::policy_file::peer_authentication(p, &at).map_err(|(f, r)| err(&f, r))?);
    }
    Ok(State::new(workloads, services).with_policies(policies, peer_auths))
}

type FieldError = (String, String);

fn ip_list(raw: &[String], at: &str) -> Result<Vec<IpAddr>, FieldError> {
    raw.iter()
        .enumerate()
        .map(|(j, a)| {
            a.parse()
                .map_err(|_| (format!("{at}[{j}]"), format!("{a:?} is not an IP address")))
        })
        .collect()
}

/// Checks what every source checks ([`Workload::validate`], [`Service::validate`]), naming
/// the field at `at`.
fn validated<T>(
    value: T,
    check: impl Fn(&T) -> Result<(), super::Invalid>,
    at: &str,
) -> Result<T, FieldError> {
    check(&value).map_err(|i| (format!("{at}.{}", i.field), i.reason))?;
    Ok(value)
}

fn workload(w: RawWorkload, at: &str) -> Result<Workload, FieldError> {
    let protocol = match w.protocol.as_deref().unwrap_or("HBONE") {
        "HBONE" => Protocol::Hbone,
        "TCP" | "NONE" => Protocol::Tcp,
        other => {
            return Err((
                format!("{at}.protocol"),
                format!("{other:?} is not HBONE or TCP"),
            ));
        }
    };
    let healthy = match w.status.as_deref().unwrap_or("Healthy") {
        "Healthy" => true,
        "Unhealthy" => false,
        other => {
            return Err((
                format!("{at}.status"),
                format!("{other:?} is not Healthy or Unhealthy"),
            ));
        }
    };
    let workload = Workload {
        addresses: ip_list(&w.addresses, &format!("{at}.addresses"))?,
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account.unwrap_or_else(|| "default".into()),
        trust_domain: w
            .trust_domain
            .unwrap_or_else(|| amesh_identity::DEFAULT_TRUST_DOMAIN.into()),
        protocol,
        node: w.node,
        healthy,
        services: w.services,
        authorization_policies: w.authorization_policies,
        locality: Locality {
            region: w.locality.region,
            zone: w.locality.zone,
            subzone: w.locality.subzone,
        },
    };
    validated(workload, Workload::validate, at)
}

fn service(s: RawService, at: &str) -> Result<Service, FieldError> {
    let load_balancing = match &s.load_balancing {
        None => LoadBalancing::default(),
        Some(lb) => load_balancing(lb, &format!("{at}.loadBalancing"))?,
    };
    let service = Service {
        vips: ip_list(&s.vips, &format!("{at}.vips"))?,
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        ports: s.ports,
        load_balancing,
    };
    validated(service, Service::validate, at)
}

fn load_balancing(lb: &RawLoadBalancing, at: &str) -> Result<LoadBalancing, FieldError> {
    let mut prefer = Vec::new();
    for (i, p) in lb.routing_preference.iter().enumerate() {
        prefer.push(match p.to_ascii_uppercase().as_str() {
            "REGION" => LocalityScope::Region,
            "ZONE" => LocalityScope::Zone,
            "SUBZONE" => LocalityScope::Subzone,
            "NODE" => LocalityScope::Node,
            other => {
                return Err((
                    format!("{at}.routingPreference[{i}]"),
                    format!("{other:?} is not Region, Zone, Subzone or Node"),
                ));
            }
        });
    }
    let strict = match lb.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("FAILOVER") => false,
        Some("STRICT") => true,
        Some(other) => {
            return Err((
                format!("{at}.mode"),
                format!("{other:?} is not Strict or Failover"),
            ));
        }
    };
    Ok(LoadBalancing { prefer, strict })
}

/// Loads the file into `store` now (failing if it is invalid: ztunnel must not start on a bad
/// file) and then reloads it whenever it changes, keeping the last good state on errors.
pub fn watch_file(path: PathBuf, store: StateStore) -> Result<(), ConfigError> {
    store.replace(load_file(&path)?);
    info!(file = %path.display(), "configuration loaded");
    tokio::spawn(async move {
        let mut seen = modified(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            // Reading and parsing are blocking work: off the data path's runtime.
            let file = path.clone();
            let loaded = tokio::task::spawn_blocking(move || load_file(&file)).await;
            let Ok(loaded) = loaded else {
                error!(file = %path.display(), "configuration reload failed; keeping the last good one");
                continue;
            };
            match loaded {
                Ok(state) => {
                    store.replace(state);
                    info!(file = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    error!(file = %e.file.display(), field = %e.field, reason = %e.reason, "configuration rejected; keeping the last good one")
                }
            }
        }
    });
    Ok(())
}

fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("amesh-ztunnel-{}-{name}.yaml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once_with_its_name() {
        let p =
            std::env::temp_dir().join(format!("amesh-ztunnel-{}-fifo.yaml", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer ever opens it: a blocking read would hang here.
        let e = load_file(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(e.field, "(file)");
        assert!(
            e.reason.contains("is a FIFO, not a regular file"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_names_its_line() {
        let p = write("latin1", "workloads: []\n");
        std::fs::write(&p, b"workloads: []\n# caf\xe9\n").unwrap();
        let e = load_file(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("line 2", "not UTF-8")
        );
    }

    #[test]
    fn a_valid_file_is_indexed() {
        let p = write(
            "ok",
            "workloads:\n- {uid: u1, name: a, namespace: ns, addresses: [10.0.0.1], services: {ns/s.ns: {80: 8080}}}\nservices:\n- {name: s, namespace: ns, hostname: s.ns, vips: [10.96.0.1], ports: {80: 8080}}\n",
        );
        let s = load_file(&p).unwrap();
        let w = s.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            (w.service_account.as_str(), w.protocol),
            ("default", Protocol::Hbone)
        );
        assert_eq!(
            w.identity().to_string(),
            "spiffe://cluster.local/ns/ns/sa/default"
        );
        assert_eq!(s.services().count(), 1);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_reason() {
        let cases = [
            (
                "workloads:\n- {uid: u1, name: a, namespace: ns, addresses: [10.0.0]}\n",
                "workloads[0].addresses[0]",
                "not an IP address",
            ),
            (
                "workloads:\n- {uid: u1, name: a, namespace: ns, protocol: UDP}\n",
                "workloads[0].protocol",
                "not HBONE or TCP",
            ),
            (
                "workloads:\n- {uid: u1, name: '', namespace: ns}\n",
                "workloads[0].name",
                "must not be empty",
            ),
            (
                "workloads:\n- {uid: u1, name: a, namespace: ns}\n- {uid: u1, name: b, namespace: ns}\n",
                "workloads[1].uid",
                "appears twice",
            ),
            (
                "services:\n- {name: s, namespace: ns, hostname: h, vips: [x]}\n",
                "services[0].vips[0]",
                "not an IP address",
            ),
            (
                "workloads:\n- {uid: u1, name: a, namespace: ns, colour: red}\n",
                "line 2",
                "unknown field",
            ),
            ("workloads: [\n", "line", "expected"),
            (
                "policies:\n- {name: p, namespace: ns, scope: Namespace, action: AUDIT}\n",
                "policies[0].action",
                "not supported at L4",
            ),
            (
                "policies:\n- {name: p, namespace: ns, scope: Everywhere, action: Allow}\n",
                "policies[0].scope",
                "not Global",
            ),
            (
                "policies:\n- {name: p, namespace: ns, scope: Global, action: Deny, rules: [{clauses: [{matches: [{sourceIps: [10.0.0.0/33]}]}]}]}\n",
                "policies[0].rules[0].clauses[0].matches[0].sourceIps[0]",
                "not an address",
            ),
            (
                "peerAuthentications:\n- {name: d, namespace: ns, scope: Mesh, mode: SOMETIMES}\n",
                "peerAuthentications[0].mode",
                "not STRICT",
            ),
        ];
        for (i, (text, field, reason)) in cases.iter().enumerate() {
            let p = write(&format!("bad{i}"), text);
            let e = load_file(&p).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&p.display().to_string()), "{msg}");
            assert!(
                e.field.starts_with(field),
                "case {i}: field {:?}, want {field}",
                e.field
            );
            assert!(msg.contains(reason), "case {i}: {msg}");
            std::fs::remove_file(p).unwrap();
        }
    }
}
