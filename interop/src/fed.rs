//! Istio's ztunnel fed by amesh's control plane (xDS), configured only through the
//! environment Istio's DaemonSet gives it.

use crate::istio::{self, config_dump, tail};
use amesh_testbed::mesh::{Mesh, pod};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::time::Duration;

/// Policies that need HTTP, and STRICT mTLS, in the namespace of `c`.
const POLICIES: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: ns-c}
spec:
  action: ALLOW
  rules: [{to: [{operation: {ports: ['8080'], methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete-from-a, namespace: ns-c}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [ns-a]}}], to: [{operation: {ports: ['8080'], methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: ns-c}
spec: {mtls: {mode: STRICT}}
";

pub fn run(istio: &std::path::Path) -> Result<String> {
    let mut mesh = Mesh::try_build(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")])
        .context("building the test bed")?;
    mesh.try_start_control_plane()
        .context("starting amesh's control plane")?;
    mesh.try_update_source(&[], |t| format!("{t}{POLICIES}"))
        .context("adding the policies")?;
    let ztunnel = istio::spawn(istio, &mesh, "node2", &mesh.dir.join("istio-zds.sock"))?;
    let dump = amesh_testbed::eventually(
        "Istio's ztunnel holding the mesh's workloads and policies",
        Duration::from_secs(30),
        || {
            let dump = config_dump().map_err(|e| format!("{e}\n{}", tail(&ztunnel.log())))?;
            let workloads = names(&dump["workloads"]);
            let policies = names(&dump["policies"]);
            let has = |list: &[String], n: &str| list.iter().any(|x| x == n);
            if has(&workloads, "a") && has(&workloads, "c") && has(&policies, "get-only") {
                Ok(dump)
            } else {
                Err(format!(
                    "workloads {workloads:?}, policies {policies:?}\n{}",
                    tail(&ztunnel.log())
                ))
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let policies = &dump["policies"];
    let by_name = |name: &str| -> Result<&Value> {
        policies
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .with_context(|| format!("no policy {name} in Istio's ztunnel: {policies}"))
    };
    let get_only = by_name("get-only")?;
    ensure!(
        get_only["rules"].as_array().is_some_and(Vec::is_empty),
        "the ALLOW rule that needs GET must allow nothing at an Istio ztunnel: {get_only}"
    );
    let no_delete = by_name("no-delete-from-a")?;
    let deny_text = no_delete["rules"].to_string();
    ensure!(
        deny_text.contains("ns-a") && deny_text.contains("8080"),
        "the DENY rule keeps its L4 part (namespace ns-a, port 8080): {no_delete}"
    );
    let strict = policies
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str().is_some_and(|n| n.contains("strict")))
        .with_context(|| format!("no converted STRICT policy: {policies}"))?;
    let cp_log = mesh
        .control_plane
        .as_ref()
        .map(|c| c.log())
        .unwrap_or_default();
    if cp_log.contains("client rejected resources") {
        bail!("Istio's ztunnel NACKed amesh's resources:\n{cp_log}");
    }
    let log = ztunnel.log();
    for bad in ["NACK", "failed to parse", "rejected"] {
        ensure!(!log.contains(bad), "Istio's ztunnel logged {bad:?}:\n{log}");
    }
    drop(ztunnel);
    let left = mesh.close();
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(format!(
        "{} workloads, {} policies accepted, no NACK; get-only allows nothing, \
         no-delete-from-a keeps ns-a/8080, STRICT as {}",
        dump["workloads"].as_array().map_or(0, Vec::len),
        policies.as_array().map_or(0, Vec::len),
        strict["name"]
    ))
}

/// The `name` of each object in an array.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect()
}
