//! Istio's ztunnel sends to amesh's waypoint: the client `a` is served by Istio's ztunnel
//! on node1 (istio-cni's rules, handed over ZDS), the server `b` and the waypoint `wp` are on
//! node2 with amesh's ztunnel; everything is fed by amesh's control plane, which binds
//! namespace `shop` to `wp`. A request from `a` to the service must reach `b` through the
//! waypoint (it carries the waypoint's `x-request-id`), and the waypoint must count it as
//! from `a`'s identity, proving Istio's ztunnel dialled it with `a`'s certificate.

use crate::istio::{self, tail};
use amesh_testbed::{
    mesh::{APP_PORT, Mesh, PodSpec, VIP, pod, uid},
    waypoint::{self, WaypointProcess},
    zds_agent::FakeAgent,
};
use anyhow::{Context, Result, bail, ensure};
use std::{os::fd::AsFd, time::Duration};

pub fn run(istio: &std::path::Path) -> Result<String> {
    let specs = [
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        PodSpec {
            tcp: true,
            ..pod("wp", "shop", "node2")
        },
    ];
    let mut mesh = Mesh::try_build(&specs).context("building the test bed")?;
    let source = std::fs::read_to_string(mesh.source_path()).context("the source")?;
    std::fs::write(
        mesh.source_path(),
        waypoint::bind_namespace(&source, "shop", "wp", "10.96.0.20"),
    )
    .context("binding shop to the waypoint")?;
    mesh.try_start_control_plane()
        .context("starting amesh's control plane")?;
    let args = mesh.fed_by_control_plane_args(&mesh.node_token_path())?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mesh.try_start_node("node2", &args)
        .context("starting node2 with amesh's ztunnel")?;
    let wp = WaypointProcess::try_start(&mesh, "wp", "shop", "wp").context("the waypoint")?;

    let mut agent = FakeAgent::listen(&mesh.dir.join("istio-zds.sock"))
        .context("the ZDS socket for Istio's ztunnel")?;
    let ztunnel = istio::spawn(istio, &mesh, "node1", agent.path())?;
    agent.accept().with_context(|| {
        format!(
            "Istio's ztunnel never connected over ZDS:\n{}",
            tail(&ztunnel.log())
        )
    })?;
    let a = mesh.spec("a");
    agent
        .add(&uid(a), "a", "shop", "a", mesh.pod("a").netns().as_fd())
        .context("ZDS add of a")?
        .map_err(|nack| anyhow::anyhow!("Istio's ztunnel refused a: {nack}"))?;
    agent
        .snapshot_sent()
        .context("ZDS snapshot")?
        .map_err(|nack| anyhow::anyhow!("Istio's ztunnel refused the snapshot: {nack}"))?;
    amesh_testbed::istio_cni::set_up(mesh.pod("a")).context("istio-cni's rules in a")?;
    // iptables redirects after routing: the service range needs a route, as a cluster pod's
    // default route gives it (eBPF capture rewrites the address before routing instead).
    mesh.pod("a")
        .add_route("10.96.0.0/16")
        .context("a route to the service range in a")?;
    let _apps = mesh.try_apps(&["b"]).context("starting b's app")?;

    let body = amesh_testbed::eventually(
        "a's request reaching b through the waypoint",
        Duration::from_secs(30),
        || {
            let out = mesh
                .pod("a")
                .command("curl")
                .args(["-sS", "--max-time", "5", &format!("http://{VIP}/through")])
                .output()
                .map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(&out.stdout).to_string();
            if body.contains("served-by=b-app") && body.contains("x-request-id=") {
                Ok(body)
            } else {
                Err(format!(
                    "{body}{}\nIstio's ztunnel:\n{}\nwaypoint:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail(&ztunnel.log()),
                    tail(&wp.log())
                ))
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        body.contains("line=GET /through HTTP/1.1"),
        "b saw the request: {body}"
    );
    let m = wp.try_metrics().context("the waypoint's metrics")?;
    let from_a = waypoint::requests(
        &m,
        &[
            "reporter=\"waypoint\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/a\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/b\"",
            "response_code=\"200\"",
        ],
    );
    ensure!(
        from_a >= 1.0,
        "the waypoint counted no request from a's identity:\n{m}"
    );
    // Pod-addressed too: Istio's ztunnel sends it to the workload's waypoint.
    let b = mesh.v4("b", APP_PORT);
    let out = mesh
        .pod("a")
        .command("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{b}/pod")])
        .output()
        .context("curl")?;
    let pod_body = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        pod_body.contains("x-request-id="),
        "pod-addressed traffic went through the waypoint: {pod_body}\n{}",
        tail(&ztunnel.log())
    );
    if ztunnel.log().contains("NACK") {
        bail!("Istio's ztunnel NACKed:\n{}", ztunnel.log());
    }
    drop(agent);
    drop(ztunnel);
    drop(wp);
    let left = mesh.close();
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(format!(
        "Istio's ztunnel sent a's service- and pod-addressed requests to amesh's waypoint; \
         it counted {from_a} from spiffe://cluster.local/ns/shop/sa/a and reached b"
    ))
}
