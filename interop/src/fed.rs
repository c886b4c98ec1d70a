//! Istio's ztunnel fed by amesh's control plane (xDS), configured only through the
//! environment Istio's DaemonSet gives it.

use amesh_testbed::mesh::{Mesh, ZtunnelProcess, pod};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::{process::Command, time::Duration};

/// Istio's admin port moved off 15000 (and stats off 15020) through its `PROXY_CONFIG`, so
/// that it never meets a ztunnel of amesh's on this machine.
const ADMIN_PORT: u16 = 15400;
const STATS_PORT: u16 = 15420;

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
    let xds = mesh
        .try_start_control_plane()
        .context("starting amesh's control plane")?;
    mesh.try_update_source(&[], |t| format!("{t}{POLICIES}"))
        .context("adding the policies")?;
    // Istio's ztunnel sends the token file's bytes as they are (a trailing newline makes
    // an invalid header and it never connects), as Kubernetes projects tokens: without one.
    // amesh's control plane trims what it compares, so the same token works both ways.
    let raw = std::fs::read(mesh.node_token_path()).context("the node token")?;
    let token = mesh.dir.join("istio-token");
    std::fs::write(&token, raw.trim_ascii_end()).context("writing Istio's token file")?;
    // Istio's ztunnel logs to stdout; the test bed keeps a daemon's stderr.
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "exec \"$0\" 1>&2"])
        .arg(istio)
        .env_clear()
        .env("XDS_ADDRESS", format!("https://{xds}"))
        .env("CA_ADDRESS", format!("https://{xds}"))
        .env("ALT_XDS_HOSTNAME", "istiod.istio-system.svc")
        .env("ALT_CA_HOSTNAME", "istiod.istio-system.svc")
        .env("XDS_ROOT_CA", mesh.ca_root_path())
        .env("CA_ROOT_CA", mesh.ca_root_path())
        .env("AUTH_TOKEN", &token)
        .env("CLUSTER_ID", "Kubernetes")
        .env("NODE_NAME", "node2")
        .env("POD_NAME", "ztunnel-interop")
        .env("POD_NAMESPACE", "istio-system")
        .env("INSTANCE_IP", "127.0.0.1")
        .env("INPOD_UDS", mesh.dir.join("istio-zds.sock"))
        .env(
            "PROXY_CONFIG",
            format!(r#"{{"proxyAdminPort": {ADMIN_PORT}, "statsPort": {STATS_PORT}, "proxyMetadata": {{}}}}"#),
        )
        .env("RUST_LOG", "info");
    let ztunnel = ZtunnelProcess::spawn(
        command,
        mesh.dir.join("istio-ztunnel.log"),
        "Istio's ztunnel",
    )
    .context("starting Istio's ztunnel")?;
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

/// Istio's ztunnel's `/config_dump` (curl: its admin answers with keep-alive and chunks).
fn config_dump() -> Result<Value, String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{ADMIN_PORT}/config_dump"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!("admin not answering yet ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("config dump: {e}"))
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The `name` of each object in an array.
fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect()
}
