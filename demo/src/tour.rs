//! The tour's steps: each does something to the mesh and checks what happened.

use amesh_testbed::{
    mesh::{APP_PORT, Mesh, VIP},
    sniff,
};
use anyhow::{Result, anyhow, ensure};
use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

/// An Istio AuthorizationPolicy, as a user would `kubectl apply` it (here: drop it into the
/// directory the control plane reads).
const DENY_WEB: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-web, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [web]}}]}]\n";

fn cart1(mesh: &Mesh) -> SocketAddr {
    mesh.v4("cart-1", APP_PORT)
}

fn served(mesh: &Mesh, from: &str, to: SocketAddr) -> Result<String> {
    Ok(mesh
        .try_connect_one(from, to)
        .map_err(|e| anyhow!(e))?
        .served_by()
        .to_string())
}

/// Retries `f` for up to ten seconds (a change propagating through watches and xDS).
fn eventually<T>(f: impl FnMut() -> Result<T>) -> Result<T> {
    let what = "the change taking effect";
    Ok(amesh_testbed::eventually(what, Duration::from_secs(10), f)?)
}

pub fn create_pods(mesh: &mut Mesh) -> Result<String> {
    mesh.try_create_pods()?;
    let chain = mesh
        .agent_node("node1")
        .runtime
        .chain()
        .map_err(|e| anyhow!(e))?;
    ensure!(
        chain == ["bridge", "amesh-cni"],
        "node1's CNI chain is {chain:?}"
    );
    for node in ["node1", "node2"] {
        mesh.try_wait_enrolled(node, &[])?;
    }
    Ok(format!(
        "{} pods; chain {}; none enrolled (no namespace labelled yet)",
        mesh.pods.len(),
        chain.join(" -> ")
    ))
}

pub fn plaintext_before(mesh: &Mesh) -> Result<String> {
    let sniffer = mesh.bed.sniff()?;
    let by = served(mesh, "web", cart1(mesh))?;
    let segments = sniffer.stop();
    ensure!(by == "cart-1-app", "answered by {by}");
    ensure!(
        sniff::any_payload_contains(&segments, cart1(mesh).to_string().as_bytes()),
        "the request was not seen on the bridge"
    );
    Ok(format!("web -> {}: request readable on br0", cart1(mesh)))
}

pub fn enrol_by_label(mesh: &Mesh) -> Result<String> {
    mesh.set_ambient("web", true)?;
    mesh.set_ambient("shop", true)?;
    mesh.try_wait_enrolled("node1", &["shop/cart-0", "web/web"])?;
    mesh.try_wait_enrolled("node2", &["shop/cart-1"])?;
    Ok("istio.io/dataplane-mode=ambient on web, shop: 3 running pods enrolled (netns found from their processes), acked by ztunnel, redirection enabled; legacy untouched".into())
}

pub fn control_plane(mesh: &Mesh) -> Result<String> {
    let mut hbone = Vec::new();
    for node in ["node1", "node2"] {
        let count = eventually(|| {
            let (_, dump) = mesh
                .ztunnel(node)
                .try_http("Admin", "GET", "/config_dump")?;
            let v: serde_json::Value = serde_json::from_str(&dump)?;
            let workloads = v["workloads"].as_array().cloned().unwrap_or_default();
            let in_mesh = workloads
                .iter()
                .filter(|w| w["protocol"] == "HBONE")
                .count();
            ensure!(
                workloads.len() == 5 && in_mesh == 3,
                "{node}: {} workloads, {in_mesh} HBONE",
                workloads.len()
            );
            Ok(in_mesh)
        })?;
        hbone.push(count);
    }
    // The pods asked for certificates as soon as they were enrolled, possibly before the
    // control plane saw the label (then refused, and asked again).
    let signed = eventually(|| {
        let log = mesh
            .control_plane
            .as_ref()
            .map(|c| c.log())
            .unwrap_or_default();
        let signed = log
            .lines()
            .filter(|l| l.contains("certificate signed"))
            .count();
        ensure!(
            signed >= 3,
            "the control plane signed {signed} certificates:\n{log}"
        );
        Ok(signed)
    })?;
    Ok(format!(
        "5 workloads in each ztunnel from delta ADS (3 HBONE; legacy and the waypoint's pod plain TCP); {signed} pod certificates signed (CreateCertificate)"
    ))
}

pub fn hbone_on_the_wire(mesh: &Mesh) -> Result<String> {
    let sniffer = mesh.bed.sniff()?;
    let by = served(mesh, "web", cart1(mesh))?;
    let segments = sniffer.stop();
    ensure!(by == "cart-1-app", "answered by {by}");
    ensure!(
        !sniff::any_payload_contains(&segments, cart1(mesh).to_string().as_bytes()),
        "plaintext seen on the wire"
    );
    let hbone = segments
        .iter()
        .filter(|s| s.dst.port() == 15008 && !s.payload.is_empty())
        .count();
    ensure!(hbone > 0, "no HBONE traffic seen");
    let app_port = segments.iter().filter(|s| s.dst.port() == APP_PORT).count();
    ensure!(
        app_port == 0,
        "{app_port} packets to the app port on the wire"
    );
    Ok(format!(
        "{hbone} encrypted segments to :15008, 0 to :{APP_PORT}"
    ))
}

pub fn identities(mesh: &Mesh) -> Result<String> {
    let log = mesh.ztunnel("node2").log();
    let line = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("\"reporter\":\"destination\"")
                && l.contains("spiffe://cluster.local/ns/web/sa/web")
        })
        .ok_or_else(|| anyhow!("no access log entry naming the client"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let f = &v["fields"];
    Ok(format!(
        "{} -> {} ({})",
        f["src.identity"].as_str().unwrap_or("?"),
        f["dst.identity"].as_str().unwrap_or("?"),
        f["security"].as_str().unwrap_or("?")
    ))
}

pub fn service_spread(mesh: &Mesh) -> Result<String> {
    let vip: SocketAddr = format!("{VIP}:80").parse()?;
    let results = mesh.try_connect("web", &[], &vec![vip; 20])?;
    let seen: BTreeSet<String> = results
        .into_iter()
        .filter_map(|r| r.outcome.ok())
        .map(|c| c.served_by().to_string())
        .collect();
    ensure!(seen.len() == 2, "answered by {seen:?}");
    Ok(format!(
        "20 connections to {vip} answered by {}",
        seen.into_iter().collect::<Vec<_>>().join(" and ")
    ))
}

/// The address the pod asks (no server there: only the capture can answer).
const CLUSTER_DNS: &str = "10.96.0.53";

pub fn dns(mesh: &Mesh) -> Result<String> {
    let out = mesh
        .pod("web")
        .command("dig")
        .args(["+short", "+tries=2", "+time=2"])
        .arg(format!("@{CLUSTER_DNS}"))
        .arg("web.shop")
        .output()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(answer == VIP, "dig answered {answer:?}");
    Ok(format!(
        "dig @{CLUSTER_DNS} web.shop -> {answer}: captured to 127.0.0.1:15053, answered from the xDS state"
    ))
}

pub fn deny(mesh: &Mesh) -> Result<String> {
    mesh.write_source("deny-web.yaml", DENY_WEB)?;
    mesh.try_wait_policies(&["deny-web"])?;
    let refused = mesh.try_connect_one("web", cart1(mesh)).is_err();
    ensure!(refused, "web still reaches cart-1");
    let log = mesh.ztunnel("node2").log();
    ensure!(
        log.contains("denied by shop/deny-web"),
        "the access log does not name the policy"
    );
    Ok("deny-web.yaml dropped into the control plane's directory; web -> cart-1 refused (HTTP 401 on the tunnel): \"denied by shop/deny-web\"".into())
}

pub fn undeny(mesh: &Mesh) -> Result<String> {
    std::fs::remove_file(mesh.source_dir().join("deny-web.yaml"))?;
    mesh.try_wait_policies(&[])?;
    let by = served(mesh, "web", cart1(mesh))?;
    ensure!(by == "cart-1-app", "answered by {by}");
    Ok("web -> cart-1 answered again".into())
}

pub fn outsider(mesh: &Mesh) -> Result<String> {
    let by = served(mesh, "legacy", cart1(mesh))?;
    ensure!(by == "cart-1-app", "answered by {by}");
    Ok("legacy -> cart-1 in plaintext, through ztunnel's 15006 listener".into())
}

pub fn metrics(mesh: &Mesh) -> Result<String> {
    let (status, text) = mesh
        .ztunnel("node2")
        .try_http("Metrics", "GET", "/metrics")?;
    ensure!(status == 200, "metrics answered {status}");
    let opened: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\""))
        .collect();
    ensure!(!opened.is_empty(), "no istio_tcp_connections_opened_total");
    for l in &opened {
        let (series, value) = l.rsplit_once(' ').unwrap_or((l, ""));
        let labels = series
            .split_once('{')
            .map_or("", |(_, rest)| rest.trim_end_matches('}'));
        let keep = [
            "source_principal",
            "destination_workload=",
            "connection_security_policy",
            "response_flags",
        ];
        let short: Vec<&str> = labels
            .split(',')
            .filter(|kv| keep.iter().any(|k| kv.starts_with(k)))
            .collect();
        println!(
            "    istio_tcp_connections_opened_total{{{}}} {value}",
            short.join(",")
        );
    }
    let denied = text.lines().any(|l| {
        l.starts_with("istio_tcp_connections_failed_total") && l.contains("response_flags=\"DENY\"")
    });
    ensure!(
        denied,
        "the refused connection is not counted with response_flags=DENY"
    );
    Ok(format!(
        "{} opened series; the refusal counted in istio_tcp_connections_failed_total{{response_flags=\"DENY\"}}",
        opened.len()
    ))
}
