//! The local configuration file (`--config`), for running ztunnel without a control plane.
//! It holds the same resources the xDS feed carries, written as YAML: each is read into
//! Istio's wire type ([`yaml`]) and converted by the same code as the feed
//! ([`super::convert`]). PeerAuthentications are converted into DENY policies exactly as the
//! control plane converts them ([`amesh_policy::strict_policy`]), so both sources refuse the
//! same connections in the name of the same policy.
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
//!   authorizationPolicies: [shop/allow-client]   # its WorkloadSelector policies
//! services:
//! - name: cart
//!   namespace: shop
//!   hostname: cart.shop.svc.cluster.local
//!   vips: [10.96.0.10]
//!   ports: {80: 8080}
//!   loadBalancing: {routingPreference: [Zone, Node], mode: Failover}   # optional
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
//!
//! A file that does not parse or validate is rejected as a whole with the file, the field and
//! the reason; the previous good state stays.

mod yaml;

use super::{Resources, State, StateWriter, convert};
use amesh_sys::file::Stamp;
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};
use tracing::{error, info};

/// The namespace converted PeerAuthentication policies are named in (Istio's root
/// namespace, as the control plane's default).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A rejected configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

/// A field of the model, named from the resource at `at`.
fn invalid(at: &str) -> impl Fn(super::Invalid) -> (String, String) + '_ {
    move |i| (format!("{at}.{}", i.field), i.reason)
}

/// Largest configuration file read.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and validates the file.
pub fn load_file(path: &Path) -> Result<State, ConfigError> {
    let err = |(field, reason): (String, String)| ConfigError {
        file: path.to_path_buf(),
        field,
        reason,
    };
    // Only a regular file, opened non-blocking (a FIFO must not wedge the reload), bounded.
    let bytes = amesh_sys::file::read_regular(path, MAX_FILE_BYTES)
        .map_err(|e| err(("(file)".into(), e.to_string())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        err((format!("line {line}"), "not UTF-8".into()))
    })?;
    let raw: yaml::FileConfig = serde_yaml::from_str(&text).map_err(|e| {
        let field = e.location().map_or_else(
            || "(document)".to_string(),
            |l| format!("line {} column {}", l.line(), l.column()),
        );
        err((field, e.to_string()))
    })?;
    let mut peer_auths = Vec::new();
    for (i, p) in raw.peer_authentications.into_iter().enumerate() {
        let at = format!("peerAuthentications[{i}]");
        peer_auths.push(yaml::peer_authentication(p, &at).map_err(err)?);
    }
    let mut resources = Resources::default();
    let mut converted = BTreeMap::new();
    let (mut uids, mut ips) = (HashSet::new(), HashSet::new());
    for (i, raw) in raw.workloads.into_iter().enumerate() {
        let at = format!("workloads[{i}]");
        let mut wire = yaml::workload(raw, &at).map_err(err)?;
        let chain = amesh_policy::chain(
            &peer_auths,
            |p| p,
            &wire.namespace,
            |p| p.workloads.contains(&wire.uid),
        );
        if let Some(p) = amesh_policy::strict_policy(&chain, ROOT_NAMESPACE) {
            wire.authorization_policies.push(p.key());
            converted.insert(p.key(), amesh_policy::wire::to_proto(&p));
        }
        let w = convert::workload(wire).map_err(invalid(&at)).map_err(err)?;
        if !uids.insert(w.uid.clone()) {
            return Err(err((
                format!("{at}.uid"),
                format!("{:?} appears twice", w.uid),
            )));
        }
        if let Some(ip) = w.addresses.iter().find(|ip| !ips.insert(**ip)) {
            return Err(err((
                format!("{at}.addresses"),
                format!("{ip} belongs to another workload too"),
            )));
        }
        resources.insert_workload(w.uid.clone(), w);
    }
    for (i, raw) in raw.services.into_iter().enumerate() {
        let at = format!("services[{i}]");
        let wire = yaml::service(raw, &at).map_err(err)?;
        let s = convert::service(wire).map_err(invalid(&at)).map_err(err)?;
        resources.insert_service(s.key(), s);
    }
    for (i, raw) in raw.policies.into_iter().enumerate() {
        let at = format!("policies[{i}]");
        let wire = yaml::policy(raw, &at).map_err(err)?;
        let p = convert::authorization(wire)
            .map_err(invalid(&at))
            .map_err(err)?;
        resources.insert_policy(p.key(), p);
    }
    for (key, wire) in converted {
        let p = convert::authorization(wire)
            .map_err(invalid("peerAuthentications"))
            .map_err(err)?;
        resources.insert_policy(key, p);
    }
    Ok(resources.state())
}

/// How often the file is examined for a change.
const POLL: Duration = Duration::from_millis(250);

/// Loads the file into `store` now (failing if it is invalid: ztunnel must not start on a bad
/// file) and then reloads it whenever it changes, keeping the last good state on errors.
pub fn watch_file(path: PathBuf, store: StateWriter) -> Result<(), ConfigError> {
    let mut seen = Stamp::of_path(&path);
    store.replace(load_file(&path)?);
    info!(file = %path.display(), "configuration loaded");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            // Examining and reading the file are blocking work: off the runtime.
            let file = path.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let now = Stamp::of_path(&file);
                (now != seen).then(|| (now, load_file(&file)))
            })
            .await;
            let loaded = match checked {
                Ok(None) => continue,
                Ok(Some((now, loaded))) => {
                    seen = now;
                    loaded
                }
                Err(_) => {
                    error!(file = %path.display(), "configuration reload failed; keeping the last good one");
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Protocol;

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
    fn waypoints_are_read_as_istios_dump_writes_them() {
        let p = write(
            "waypoint",
            "workloads:\n- {uid: u1, name: a, namespace: ns, addresses: [10.0.0.1], waypoint: 10.0.0.9}\nservices:\n- {name: s, namespace: ns, hostname: s.ns, vips: [10.96.0.1], waypoint: ns/wp.ns.svc.cluster.local}\n",
        );
        let s = load_file(&p).unwrap();
        std::fs::remove_file(p).unwrap();
        let w = s.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            w.waypoint.as_ref().map(|w| w.to_string()).as_deref(),
            Some("10.0.0.9:15008")
        );
        let svc = s.services().next().unwrap();
        assert_eq!(
            svc.waypoint.as_ref().map(|w| w.to_string()).as_deref(),
            Some("ns/wp.ns.svc.cluster.local:15008")
        );
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
                "workloads:\n- {uid: u1, name: a, namespace: ns, waypoint: nowhere}\n",
                "workloads[0].waypoint",
                "is not namespace/hostname or an address",
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

    /// PeerAuthentication in the file and in the control plane's source become the same
    /// DENY policies, referenced from the same workloads: both refuse the same connections
    /// in the name of the same policy.
    #[test]
    fn peer_authentication_converts_as_the_control_plane_converts_it() {
        use amesh_controlplane::translate;
        use amesh_kube::source;
        use amesh_proto::workload as pb;
        let pod = |name: &str, app: &str, ip: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: c}}]}}\nstatus: {{phase: Running, podIPs: [{{ip: {ip}}}]}}\n"
            )
        };
        let cases = [
            (
                "mesh STRICT",
                "- {name: m, namespace: istio-system, scope: Mesh, mode: STRICT}\n",
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: m, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
            ),
            (
                "namespace STRICT, one port PERMISSIVE",
                "- {name: s, namespace: shop, scope: Namespace, mode: STRICT, portLevelMtls: {9090: PERMISSIVE}}\n",
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: s, namespace: shop}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {\"9090\": {mode: PERMISSIVE}}}\n",
            ),
            (
                "workload PERMISSIVE under namespace STRICT, one port STRICT",
                "- {name: s, namespace: shop, scope: Namespace, mode: STRICT}\n- {name: w, namespace: shop, scope: Workload, workloads: [Kubernetes//v1/Pod/shop/a], mode: PERMISSIVE, portLevelMtls: {5432: STRICT}}\n",
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: s, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: w, namespace: shop}\nspec: {selector: {matchLabels: {app: a}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {\"5432\": {mode: STRICT}}}\n",
            ),
        ];
        for (i, (case, file_pas, crds)) in cases.iter().enumerate() {
            let file = write(
                &format!("pa{i}"),
                &format!(
                    "workloads:\n- {{uid: Kubernetes//v1/Pod/shop/a, name: a, namespace: shop, addresses: [10.0.0.1]}}\n- {{uid: Kubernetes//v1/Pod/shop/b, name: b, namespace: shop, addresses: [10.0.0.2]}}\npeerAuthentications:\n{file_pas}"
                ),
            );
            let from_file = load_file(&file).unwrap();
            std::fs::remove_file(&file).unwrap();

            let objects = format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n{}{}{crds}",
                pod("a", "a", "10.0.0.1"),
                pod("b", "b", "10.0.0.2"),
            );
            let (mut snap, mut errors) = (source::Snapshot::default(), Vec::new());
            source::read_documents(Path::new("pa.yaml"), &objects, &mut snap, &mut errors);
            assert!(errors.is_empty(), "{case}: {errors:?}");
            let fed = translate::translate(&snap, &translate::Mesh::default());

            for name in ["a", "b"] {
                let uid = format!("Kubernetes//v1/Pod/shop/{name}");
                let Some(pb::address::Type::Workload(w)) = fed.addresses[&uid].r#type.clone()
                else {
                    panic!("{case}: {uid} is not a workload");
                };
                let fed_policies: Vec<amesh_policy::Authorization> = w
                    .authorization_policies
                    .iter()
                    .map(|k| convert::authorization(fed.authorizations[k].clone()).unwrap())
                    .collect();
                let mine = from_file.workload(&uid).unwrap();
                let file_policies: Vec<amesh_policy::Authorization> = from_file
                    .policies_for("shop", Some(mine))
                    .unwrap()
                    .iter()
                    .map(|p| p.as_ref().clone())
                    .collect();
                assert_eq!(file_policies, fed_policies, "{case}: {name}");
                assert!(
                    !fed_policies.is_empty(),
                    "{case}: {name}: nothing converted"
                );
            }
        }
    }
}
