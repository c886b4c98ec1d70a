//! The waypoint in the test bed: the control plane binds namespace `shop` to waypoint `wp`
//! (a Gateway of class istio-waypoint, its pod `wp` outside the capture), ztunnel sends `a`'s
//! service-addressed and pod-addressed traffic to it over HBONE, and the waypoint serves the
//! requests (real curl) and re-originates HBONE to `b` with its own identity; a CONNECT for
//! something not bound to it is refused, and a waypoint that is gone fails connections
//! closed, never sent around it.

use crate::support::*;
use amesh_testbed::{
    mesh::PodSpec,
    waypoint::{self, WaypointProcess},
};
use std::{net::SocketAddr, time::Duration};

pub const WP: PodSpec = PodSpec {
    tcp: true,
    ..pod("wp", "shop", "node2")
};

fn specs() -> Vec<PodSpec> {
    vec![
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        WP,
    ]
}

/// The mesh, its namespace bound to the waypoint, and the waypoint running in pod `wp`.
fn waypoint_mesh() -> (Mesh, WaypointProcess) {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, bind_shop);
    let waypoint = start_bound(&mut mesh);
    (mesh, waypoint)
}

/// The source with `wp` as a waypoint (pod label, Gateway, Service) and namespace `shop`
/// bound to it.
pub fn bind_shop(t: String) -> String {
    waypoint::bind_namespace(&t, "shop", "wp", "10.96.0.20")
}

pub fn xds_edit(mesh: &Mesh, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(mesh.source_path()).expect("read the source");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the source");
    std::fs::write(mesh.source_path(), edited).expect("write the source");
}

/// Starts what a bound mesh runs, its source already written: the control plane, both
/// nodes (waiting until their ztunnels are ready) and the waypoint in pod `wp`.
pub fn start_bound(mesh: &mut Mesh) -> WaypointProcess {
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start(&[]).expect("start the nodes");
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node).expect("ztunnel ready");
    }
    start_waypoint(mesh)
}

/// The test app in each pod named, with its extra `serve` arguments (`--status`,
/// `--delay-ms`), named `<pod>-app` and listening on [`APP_PORT`].
pub fn apps_with(mesh: &Mesh, apps: &[(&str, &[&str])]) -> Vec<amesh_testbed::PodProcess> {
    let any = SocketAddr::from(([0u16; 8], APP_PORT));
    apps.iter()
        .map(|(n, extra)| {
            amesh_testbed::probe::serve_with(
                &mesh.probe,
                mesh.pod(n),
                &format!("{n}-app"),
                extra,
                &[any],
            )
            .expect("app")
        })
        .collect()
}

pub fn start_waypoint(mesh: &Mesh) -> WaypointProcess {
    WaypointProcess::try_start(mesh, "wp", "shop", "wp").unwrap_or_else(|e| panic!("{e}"))
}

/// `curl` from pod `from`: (status, body).
pub fn curl(mesh: &Mesh, from: &str, url: &str) -> (u16, String) {
    let out = mesh
        .pod(from)
        .command("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

pub fn metrics(waypoint: &WaypointProcess) -> String {
    waypoint.try_metrics().expect("the waypoint's metrics")
}

pub use waypoint::requests as waypoint_requests;

#[test]
fn service_and_pod_addressed_requests_go_through_the_waypoint() {
    let (mesh, waypoint) = waypoint_mesh();
    let _apps = mesh.apps(&["b"]);
    // ztunnel sees the binding, as Istio's dump shows it.
    crate::xds::wait_dump(&mesh, "node1", "web bound to the waypoint", |v| {
        v["services"].as_array().into_iter().flatten().any(|s| {
            s["hostname"] == "web.shop.svc.cluster.local"
                && s["waypoint"]["destination"] == "shop/wp.shop.svc.cluster.local"
                && s["waypoint"]["hboneMtlsPort"] == 15008
        })
    });

    // Service-addressed: the waypoint answers with b's app behind it and adds its headers.
    let (status, body) = curl(&mesh, "a", &format!("http://{VIP}/hello"));
    assert_eq!(status, 200, "{body}\nwaypoint log:\n{}", waypoint.log());
    assert!(body.contains("served-by=b-app"), "{body}");
    assert!(body.contains("line=GET /hello HTTP/1.1"), "{body}");
    assert!(
        body.contains("x-request-id="),
        "the waypoint adds a request id: {body}"
    );
    assert!(
        body.contains("traceparent=00-"),
        "and trace context: {body}"
    );

    // Pod-addressed: through the waypoint too (the namespace binds workloads as well).
    let b = mesh.v4("b", APP_PORT);
    let (status, body) = curl(&mesh, "a", &format!("http://{b}/direct"));
    assert_eq!(status, 200, "{body}\nwaypoint log:\n{}", waypoint.log());
    assert!(
        body.contains("x-request-id="),
        "pod-addressed went through the waypoint: {body}"
    );

    // The far hop carried the waypoint's identity: b's ztunnel logged it as the source.
    let z2 = mesh.ztunnel("node2").log();
    assert!(
        z2.contains("spiffe://cluster.local/ns/shop/sa/wp"),
        "b's ztunnel saw the waypoint's identity:\n{z2}"
    );

    // Istio's waypoint metrics count both requests.
    let m = metrics(&waypoint);
    let counted = waypoint_requests(
        &m,
        &[
            "reporter=\"waypoint\"",
            "response_code=\"200\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/a\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/b\"",
        ],
    );
    assert_eq!(counted, 2.0, "{m}");
}

#[test]
fn an_unbound_authority_is_refused_and_a_dead_waypoint_fails_closed() {
    let (mesh, mut waypoint) = waypoint_mesh();
    let _apps = mesh.apps(&["b"]);
    // The waypoint's own pod has no waypoint: a's connection to it goes direct, as HBONE to
    // the waypoint's 15008, whose listener sees a CONNECT for an authority not bound to it.
    let wp = mesh.v4("wp", 15008);
    let _ = mesh.try_connect_one("a", SocketAddr::new(wp.ip(), APP_PORT));
    amesh_testbed::eventually("the refusal counted", Duration::from_secs(10), || {
        let m = metrics(&waypoint);
        m.lines()
            .any(|l| l.starts_with("amesh_waypoint_refused_total{reason=\"NotBound\"}"))
            .then_some(())
            .ok_or(m)
    })
    .unwrap_or_else(|e| panic!("{e}\nwaypoint log:\n{}", waypoint.log()));
    assert!(
        waypoint.log().contains("is not bound to this waypoint"),
        "{}",
        waypoint.log()
    );

    // The waypoint dies: connections to the service fail, and b's app sees none of them.
    let _ = waypoint.daemon.child.kill();
    let _ = waypoint.daemon.wait_exit(Duration::from_secs(5));
    let (status, body) = curl(&mesh, "a", &format!("http://{VIP}/after"));
    assert_eq!(status, 0, "no answer once the waypoint is gone: {body}");
    let z1 = mesh.ztunnel("node1").log();
    assert!(
        z1.contains(&format!("hbone to {wp}")),
        "node1's ztunnel failed the connection at the waypoint's address {wp}:\n{z1}"
    );
}

/// Raw bytes to `target` from pod `from` through its capture (bash's /dev/tcp); the answer.
fn raw(mesh: &Mesh, from: &str, target: SocketAddr, bytes: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf '{bytes}' >&3; timeout 5 cat <&3",
        target.ip(),
        target.port()
    );
    let out = mesh
        .pod(from)
        .command("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn malformed_and_oversized_requests_get_their_status_and_nothing_else_is_affected() {
    let (mesh, waypoint) = waypoint_mesh();
    let _apps = mesh.apps(&["b"]);
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("VIP");
    let bad = raw(
        &mesh,
        "a",
        vip,
        "GET / HTTP/1.1\\r\\nthis is not a header\\r\\n\\r\\n",
    );
    assert!(
        bad.starts_with("HTTP/1.1 400"),
        "a malformed head is answered 400: {bad:?}"
    );
    let huge = "x".repeat(70 * 1024);
    let big = raw(
        &mesh,
        "a",
        vip,
        &format!("GET / HTTP/1.1\\r\\nHost: web\\r\\nx-big: {huge}\\r\\n\\r\\n"),
    );
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "a head over 64 KiB is answered 431: {:?}",
        big.get(..80)
    );
    // A server-first or binary protocol is relayed as opaque TCP, not broken.
    let tls_like = raw(&mesh, "a", vip, "\\x16\\x03\\x01\\x00\\x05hello\\n");
    assert!(
        tls_like.contains("served-by=b-app"),
        "opaque bytes reach the app: {tls_like:?}"
    );
    // The waypoint still serves everyone else.
    let (status, body) = curl(&mesh, "a", &format!("http://{VIP}/after"));
    assert_eq!(status, 200, "{body}\n{}", waypoint.log());
    let m = metrics(&waypoint);
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{reporter=\"waypoint\"")),
        "the opaque connection was counted as TCP: {m}"
    );
}

#[test]
fn http2_clients_are_served_and_sent_on_as_http1() {
    let (mesh, waypoint) = waypoint_mesh();
    let _apps = mesh.apps(&["b"]);
    let url = format!("http://{VIP}/h2");
    // curl with HTTP/2 prior knowledge: the app (HTTP/1.1 only) answers through the waypoint.
    let out = mesh
        .pod("a")
        .command("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.ends_with("\n2"),
        "the client spoke HTTP/2 end to end with the waypoint: {text}"
    );
    assert!(
        text.contains("line=GET /h2 HTTP/1.1"),
        "the app got HTTP/1.1: {text}\n{}",
        waypoint.log()
    );
    assert!(text.contains("x-request-id="), "{text}");
    // h2load: many streams on few connections.
    let out = mesh
        .pod("a")
        .command("h2load")
        .args(["-n", "60", "-c", "2", "-m", "4", &url])
        .output()
        .expect("h2load");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("60 succeeded") && report.contains("status codes: 60 2xx"),
        "{report}\n{}",
        waypoint.log()
    );
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"200\"", "request_protocol=\"http\""]) >= 61.0,
        "{m}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_the_waypoint_exits() {
    let (mesh, mut waypoint) = waypoint_mesh();
    // b answers after 2 s, so the request is still in flight when the waypoint is told to stop.
    let any = SocketAddr::from(([0u16; 8], APP_PORT));
    let _app = amesh_testbed::probe::serve_with(
        &mesh.probe,
        mesh.pod("b"),
        "b-app",
        &["--delay-ms", "2000"],
        &[any],
    )
    .expect("b's app");
    let mut cmd = mesh.pod("a").command("curl");
    cmd.args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(format!("http://{VIP}/slow"));
    let curl = mesh.pod("a").spawn(cmd).expect("curl");
    // In flight once the waypoint holds an HBONE connection to b (none existed before).
    let b = mesh.v4("b", 15008);
    amesh_testbed::eventually(
        "the request in flight at the waypoint",
        Duration::from_secs(10),
        || {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    mesh.pod("wp").netns_name(),
                    "ss",
                    "-Htn",
                    "state",
                    "established",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains(&b.to_string()).then_some(()).ok_or(text)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = waypoint.daemon.child.id();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (_, lines) = curl.finish(Duration::from_secs(20)).expect("curl ends");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("200"),
        "the in-flight request finished: {lines:?}\n{}",
        waypoint.log()
    );
    assert!(
        lines.iter().any(|l| l.contains("served-by=b-app")),
        "{lines:?}"
    );
    let status = waypoint
        .daemon
        .wait_exit(Duration::from_secs(25))
        .expect("the waypoint exits after draining");
    assert!(status.success(), "exit status {status}");
    let log = waypoint.log();
    assert!(log.contains("draining") && log.contains("drained"), "{log}");
}
