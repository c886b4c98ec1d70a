//! One mesh, two data planes: amesh's ztunnel on node1 (eBPF capture) serving `a`, Istio's
//! ztunnel on node2 serving `c` the way istio-cni sets a pod up (its in-pod rules from
//! `amesh_testbed::istio_cni`, the pod handed over ZDS), both fed by amesh's control plane and holding certificates of
//! its CA. HBONE must work both ways, each side must see the other's identity, and Istio's
//! ztunnel must hold a certificate for `c` that amesh's CA issued.

use crate::istio::{self, STATS_PORT, config_dump, tail};
use amesh_testbed::{
    mesh::{APP_PORT, Mesh, pod, uid},
    zds_agent::FakeAgent,
};
use anyhow::{Context, Result, bail, ensure};
use std::{os::fd::AsFd, time::Duration};

/// The sum of the samples of `name` whose line holds every one of `must`.
fn metric(text: &str, name: &str, must: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// amesh's ztunnel on node1 with its eBPF capture.
pub fn run(istio: &std::path::Path) -> Result<String> {
    run_with(istio, Capture::Ebpf)
}

/// The same, amesh's ztunnel under istio-cni's rules too (`--capture iptables`): the cluster
/// that swaps only Istio's ztunnel DaemonSet for amesh's, on some nodes.
pub fn run_under_istio_cni(istio: &std::path::Path) -> Result<String> {
    run_with(istio, Capture::IstioCni)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Ebpf,
    IstioCni,
}

fn run_with(istio: &std::path::Path, capture: Capture) -> Result<String> {
    let mut mesh = Mesh::try_build(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")])
        .context("building the test bed")?;
    mesh.try_start_control_plane()
        .context("starting amesh's control plane")?;
    let args = mesh.fed_by_control_plane_args(&mesh.node_token_path())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match capture {
        Capture::Ebpf => mesh.try_start_node("node1", &args),
        Capture::IstioCni => mesh.try_start_node_under_istio_cni("node1", &args),
    }
    .context("starting node1 with amesh's ztunnel")?;

    let mut agent = FakeAgent::listen(&mesh.dir.join("istio-zds.sock"))
        .context("the ZDS socket for Istio's ztunnel")?;
    let ztunnel = istio::spawn(istio, &mesh, "node2", agent.path())?;
    agent.accept().with_context(|| {
        format!(
            "Istio's ztunnel never connected over ZDS:\n{}",
            tail(&ztunnel.log())
        )
    })?;
    let c = mesh.spec("c");
    agent
        .add(&uid(c), "c", "ns-c", "c", mesh.pod("c").netns().as_fd())
        .context("ZDS add of c")?
        .map_err(|nack| anyhow::anyhow!("Istio's ztunnel refused c: {nack}"))?;
    agent
        .snapshot_sent()
        .context("ZDS snapshot")?
        .map_err(|nack| anyhow::anyhow!("Istio's ztunnel refused the snapshot: {nack}"))?;
    amesh_testbed::istio_cni::set_up(mesh.pod("c")).context("istio-cni's rules in c")?;
    let _apps = mesh.try_apps(&["a", "c"]).context("starting the apps")?;

    let reach = |from: &str, to: &str| {
        amesh_testbed::eventually(
            format!("{from} reaching {to} across the two data planes"),
            Duration::from_secs(30),
            || match mesh.try_connect_one(from, mesh.v4(to, APP_PORT)) {
                Ok(c) if c.served_by() == format!("{to}-app") => Ok(()),
                Ok(c) => Err(format!("served by {}", c.served_by())),
                Err(e) => Err(format!("{e}\nIstio's ztunnel:\n{}", tail(&ztunnel.log()))),
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    };
    reach("a", "c")?;
    reach("c", "a")?;

    // Each side saw the other's certificate identity, and named its workload.
    let theirs = istio::get(STATS_PORT, "/metrics").map_err(|e| anyhow::anyhow!(e))?;
    let from_a = metric(
        &theirs,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"",
            "source_workload=\"a\"",
            "destination_workload=\"c\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    ensure!(
        from_a >= 1,
        "Istio's ztunnel did not count a's connection as from a:\n{theirs}"
    );
    let ours = mesh
        .node("node1")
        .ztunnel
        .try_http("Metrics", "GET", "/metrics")
        .context("amesh's metrics")?
        .1;
    let from_c = metric(
        &ours,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/ns-c/sa/c\"",
            "source_workload=\"c\"",
            "destination_workload=\"a\"",
        ],
    );
    ensure!(
        from_c >= 1,
        "amesh's ztunnel did not count c's connection as from c:\n{ours}"
    );

    // Istio's ztunnel holds c's certificate, issued by amesh's CA.
    let dump = config_dump().map_err(|e| anyhow::anyhow!(e))?;
    let cert = dump["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["identity"] == "spiffe://cluster.local/ns/ns-c/sa/c")
        .with_context(|| {
            format!(
                "no certificate for c in Istio's ztunnel: {}",
                dump["certificates"]
            )
        })?;
    ensure!(cert["state"] == "Available", "c's certificate: {cert}");
    let root = std::fs::read_to_string(mesh.ca_root_path()).context("the mesh root")?;
    let held_root = cert["rootCerts"][0]["pem"].as_str().unwrap_or_default();
    let decoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(held_root)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let strip = |s: &str| s.split_whitespace().collect::<String>();
    ensure!(
        strip(&decoded) == strip(&root),
        "c's root is amesh's CA root:\n{decoded}\nvs\n{root}"
    );
    let log = ztunnel.log();
    if log.contains("NACK") {
        bail!("Istio's ztunnel NACKed:\n{log}");
    }
    drop(agent);
    drop(ztunnel);
    let left = mesh.close();
    ensure!(left.is_empty(), "left behind: {left:?}");
    let ours = match capture {
        Capture::Ebpf => "eBPF",
        Capture::IstioCni => "istio-cni iptables",
    };
    Ok(format!(
        "a (amesh, {ours}) <-> c (Istio, istio-cni iptables) over HBONE both ways; \
         Istio counted a as {from_a} connection(s) from spiffe://cluster.local/ns/ns-a/sa/a, \
         amesh counted c as {from_c} from .../ns-c/sa/c; c's certificate from amesh's CA"
    ))
}
