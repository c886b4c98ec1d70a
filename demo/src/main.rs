//! `cargo xtask demo`: a mesh on this machine, out of network namespaces: the control plane
//! (xDS and CA, from Kubernetes YAML) and two nodes, each with amesh's eBPF capture, a node
//! agent (a stand-in speaking ZDS until the real one lands) and a real ztunnel; a client in
//! namespace `web`, a service `web.shop` with two endpoints, and a pod outside the mesh.
//! Every step is verified, not just printed.
//!
//! Exits 0 only if every step passed; removes everything it made, also on Ctrl-C.
#![forbid(unsafe_code)]

use amesh_testbed::{
    mesh::{APP_PORT, Mesh, PodSpec, VIP, outside, pod},
    sniff,
};
use anyhow::{Result, anyhow, ensure};
use std::{collections::BTreeSet, net::SocketAddr};

struct Step {
    name: &'static str,
    outcome: Result<String>,
}

/// An Istio AuthorizationPolicy, as a user would `kubectl apply` it.
const DENY_WEB: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-web, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [web]}}]}]\n";

fn specs() -> Vec<PodSpec> {
    let endpoint = |p: PodSpec| PodSpec {
        in_service: true,
        ..p
    };
    vec![
        pod("web", "web", "node1"),
        endpoint(pod("cart-0", "shop", "node1")),
        endpoint(pod("cart-1", "shop", "node2")),
        outside("legacy"),
    ]
}

fn main() -> std::process::ExitCode {
    println!(
        "amesh demo: a two-node mesh in network namespaces, real eBPF capture, real ztunnels\n"
    );
    let steps = match run() {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("demo: could not set up: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    summary(&steps)
}

fn summary(steps: &[Step]) -> std::process::ExitCode {
    println!("\n{:<60} {:<6} evidence", "step", "result");
    println!("{}", "-".repeat(130));
    let mut failed = 0;
    for s in steps {
        let (result, evidence) = match &s.outcome {
            Ok(e) => ("ok", e.clone()),
            Err(e) => {
                failed += 1;
                ("FAIL", format!("{e:#}"))
            }
        };
        println!("{:<60} {:<6} {evidence}", s.name, result);
    }
    println!();
    if failed == 0 {
        println!("all {} steps passed", steps.len());
        std::process::ExitCode::SUCCESS
    } else {
        println!("{failed} of {} steps failed", steps.len());
        std::process::ExitCode::FAILURE
    }
}

fn run() -> Result<Vec<Step>> {
    ensure!(
        amesh_sys::fs::euid() == 0,
        "the demo builds network namespaces and loads eBPF: run it as root"
    );
    let mut mesh = Mesh::try_build(&specs())?;
    println!(
        "• built pods under prefix {} (underlay bridge br0):",
        mesh.bed.prefix()
    );
    for (s, p) in mesh.specs.iter().zip(&mesh.pods) {
        let node = s.node.unwrap_or("(not in the mesh)");
        println!(
            "  {:<7} ns {:<8} {:<18} {:<12} {}",
            s.name,
            s.namespace,
            node,
            p.ipv4(),
            p.ipv6()
        );
    }
    let _apps = mesh.try_apps(&["cart-0", "cart-1"])?;
    let mut steps = Vec::new();
    let mut step = |name, outcome: Result<String>| {
        println!("[{}] {name}", if outcome.is_ok() { "ok  " } else { "FAIL" });
        steps.push(Step { name, outcome });
    };
    step(
        "before the mesh: the request crosses the wire in plaintext",
        plaintext_before(&mesh),
    );
    let xds = mesh.try_start_control_plane()?.to_string();
    println!("• control plane serving xDS and Istio's CA on {xds} (source: Kubernetes YAML)");
    mesh.try_start_fed_by_control_plane(&mesh.node_token_path())?;
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)?;
    }
    println!(
        "• started node1 and node2: capture programs loaded, pods enrolled, ztunnels serving them"
    );
    step(
        "ztunnels fed over xDS, pod certs from the control plane CA",
        control_plane(&mesh),
    );
    step(
        "in the mesh: HBONE mTLS on 15008, no plaintext on the wire",
        hbone_on_the_wire(&mesh),
    );
    step(
        "the destination sees the client's SPIFFE identity",
        identities(&mesh),
    );
    step(
        "the service VIP spreads over its endpoints",
        service_spread(&mesh),
    );
    step(
        "a DENY policy refuses the client, with its reason",
        deny(&mesh),
    );
    step("removing the policy restores access", undeny(&mesh));
    step(
        "pods outside the mesh still reach in (PERMISSIVE)",
        outsider(&mesh),
    );
    step("Istio metrics on the destination node", metrics(&mesh));
    let left = mesh.close();
    let cleaned = if left.is_empty() {
        Ok("netns, veths, cgroup, pins, processes all removed".into())
    } else {
        Err(anyhow!("left: {left:?}"))
    };
    step("nothing left behind", cleaned);
    Ok(steps)
}

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

fn plaintext_before(mesh: &Mesh) -> Result<String> {
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

fn hbone_on_the_wire(mesh: &Mesh) -> Result<String> {
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

fn identities(mesh: &Mesh) -> Result<String> {
    let log = mesh.node("node2").ztunnel.log();
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

fn service_spread(mesh: &Mesh) -> Result<String> {
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

fn control_plane(mesh: &Mesh) -> Result<String> {
    let mut workloads = Vec::new();
    for node in ["node1", "node2"] {
        let (_, dump) = mesh
            .node(node)
            .ztunnel
            .try_http("Admin", "GET", "/config_dump")?;
        let v: serde_json::Value = serde_json::from_str(&dump)?;
        workloads.push(v["workloads"].as_array().map_or(0, Vec::len));
    }
    ensure!(
        workloads.iter().all(|&n| n == 3),
        "workloads per ztunnel: {workloads:?}"
    );
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
    Ok(format!(
        "3 workloads in each ztunnel from delta ADS; {signed} pod certificates signed (CreateCertificate)"
    ))
}

fn deny(mesh: &Mesh) -> Result<String> {
    mesh.try_update_source(&["deny-web"], |t| format!("{t}{DENY_WEB}"))?;
    let refused = mesh.try_connect_one("web", cart1(mesh)).is_err();
    ensure!(refused, "web still reaches cart-1");
    let log = mesh.node("node2").ztunnel.log();
    ensure!(
        log.contains("denied by shop/deny-web"),
        "the access log does not name the policy"
    );
    Ok("AuthorizationPolicy applied through the control plane; web -> cart-1 refused (HTTP 401 on the tunnel): \"denied by shop/deny-web\"".into())
}

fn undeny(mesh: &Mesh) -> Result<String> {
    mesh.try_update_source(&[], |t| t.replace(DENY_WEB, ""))?;
    let by = served(mesh, "web", cart1(mesh))?;
    ensure!(by == "cart-1-app", "answered by {by}");
    Ok("web -> cart-1 answered again".into())
}

fn outsider(mesh: &Mesh) -> Result<String> {
    let by = served(mesh, "legacy", cart1(mesh))?;
    ensure!(by == "cart-1-app", "answered by {by}");
    Ok("legacy -> cart-1 in plaintext, through ztunnel's 15006 listener".into())
}

fn metrics(mesh: &Mesh) -> Result<String> {
    let (status, text) = mesh
        .node("node2")
        .ztunnel
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
