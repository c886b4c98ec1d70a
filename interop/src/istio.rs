//! Istio's ztunnel as its DaemonSet runs it: configured only through the environment, its
//! token file as Kubernetes projects it, istiod's host name, fed by amesh's control plane.

use amesh_testbed::mesh::{Mesh, ZtunnelProcess};
use anyhow::{Context, Result};
use serde_json::Value;
use std::{path::Path, process::Command};

/// Istio's admin port moved off 15000 (and stats off 15020) through its `PROXY_CONFIG`, so
/// that it never meets a ztunnel of amesh's on this machine.
pub const ADMIN_PORT: u16 = 15400;
pub const STATS_PORT: u16 = 15420;

/// Starts Istio's ztunnel for `node`, fed over xDS and by the CA of the mesh's running
/// control plane, taking its pods over ZDS from `uds`.
pub fn spawn(istio: &Path, mesh: &Mesh, node: &str, uds: &Path) -> Result<ZtunnelProcess> {
    let xds = mesh
        .xds
        .context("the control plane must run before Istio's ztunnel starts")?;
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
        .env("NODE_NAME", node)
        .env("POD_NAME", "ztunnel-interop")
        .env("POD_NAMESPACE", "istio-system")
        .env("INSTANCE_IP", "127.0.0.1")
        .env("INPOD_UDS", uds)
        .env(
            "PROXY_CONFIG",
            format!(r#"{{"proxyAdminPort": {ADMIN_PORT}, "statsPort": {STATS_PORT}, "proxyMetadata": {{}}}}"#),
        )
        .env("RUST_LOG", "info");
    ZtunnelProcess::spawn(
        command,
        mesh.dir.join("istio-ztunnel.log"),
        "Istio's ztunnel",
    )
    .context("starting Istio's ztunnel")
}

/// GETs `path` from Istio's ztunnel on `port` (curl: its admin answers with keep-alive and
/// chunks).
pub fn get(port: u16, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!("{path} not answering yet ({})", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{path}: {e}"))
}

/// Istio's ztunnel's `/config_dump`.
pub fn config_dump() -> Result<Value, String> {
    let text = get(ADMIN_PORT, "/config_dump")?;
    serde_json::from_str(&text).map_err(|e| format!("config dump: {e}"))
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
