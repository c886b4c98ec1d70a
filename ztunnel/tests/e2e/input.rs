//! Hostile or mistyped input that must not change what ztunnel does or reports (issue 17):
//! log levels the admin endpoint does not know, and a CONNECT naming the pod by its
//! IPv4-mapped IPv6 address.

use crate::support::*;
use amesh_identity::Identity;
use std::time::Duration;

/// Access-log events of `z` for connections to `dst` (as the log writes it), as seen by the
/// destination.
fn access_to(z: &ZtunnelProcess, dst: &str) -> Vec<serde_json::Value> {
    log_events(z, "connection complete")
        .into_iter()
        .filter(|f| f["reporter"] == "destination" && f["dst.addr"] == dst)
        .collect()
}

/// `POST /logging?level=<bad>` is a 400 that lists the valid levels; its body.
fn refused_level(z: &ZtunnelProcess, bad: &str) -> String {
    let (status, body) = z.http("Admin", "POST", &format!("/logging?level={bad}"));
    assert_eq!(status, 400, "level={bad} must be refused: {body}");
    assert!(
        body.contains("off|error|warn|info|debug|trace"),
        "level={bad}: the answer lists the valid levels: {body}"
    );
    body
}

#[test]
fn an_unknown_log_level_is_refused_with_the_valid_ones_and_changes_nothing() {
    let mesh = Mesh::new(&[pod("c", "ns-c", "node1"), outside("d")]);
    let _apps = mesh.apps(&["c"]);
    let z = &mesh.node("node1").ztunnel;
    let body = refused_level(z, "inof");
    assert!(body.contains("\"inof\" is not a valid level"), "{body}");
    for bad in ["", "info,debg", "access=warn", "access:", "[nonsense"] {
        refused_level(z, bad);
    }
    let before = "current log level is info\n".to_string();
    assert_eq!(
        z.http("Admin", "GET", "/logging"),
        (200, before.clone()),
        "the level ztunnel started with (RUST_LOG=info) is unchanged"
    );
    // Logging still works, access logs included.
    let c_app = mesh.v4("c", APP_PORT);
    assert_eq!(mesh.connect_one("d", c_app).served_by(), "c-app");
    wait_for("the access log of d -> c", Duration::from_secs(10), || {
        let n = access_to(z, &c_app.to_string()).len();
        (n == 1).then_some(()).ok_or(format!("{n} lines"))
    });

    // Istio's syntax: `<target>:<level>` changes one target; `reset` goes back.
    let (status, body) = z.http("Admin", "POST", "/logging?level=access:warn");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("access=warn") && body.contains("info"),
        "{body}"
    );
    assert_eq!(z.http("Admin", "POST", "/logging?reset"), (200, before));
    assert_eq!(
        z.http("Admin", "POST", "/logging?level=debug"),
        (200, "current log level is debug\n".to_string())
    );
}

#[test]
fn a_connect_to_the_ipv4_mapped_pod_address_is_served_and_logged_as_ipv4() {
    let mesh = Mesh::new(&[pod("c", "ns-c", "node1"), outside("d")]);
    let _apps = mesh.apps(&["c"]);
    let z = &mesh.node("node1").ztunnel;
    let c_ip = mesh.pod("c").ipv4();
    let mapped = format!("[::ffff:{c_ip}]:{APP_PORT}");
    let reply = hbone_line(
        &mesh,
        "d",
        mesh.v4("c", 15008),
        Identity::new("cluster.local", "ns-c", "c"),
        &mapped,
    )
    .unwrap();
    assert!(reply.starts_with("served-by=c-app"), "{reply}");

    let line = wait_for(
        "the access log of the CONNECT",
        Duration::from_secs(10),
        || {
            let mut lines = log_events(z, "connection complete");
            lines.retain(|f| f["reporter"] == "destination");
            lines.pop().ok_or_else(|| z.log())
        },
    );
    let plain = mesh.v4("c", APP_PORT).to_string();
    assert_eq!(
        line["dst.addr"],
        plain.as_str(),
        "the destination in plain IPv4: {line}"
    );
    let src = line["src.addr"].as_str().unwrap_or_default();
    assert!(
        src.starts_with(&format!("{}:", mesh.pod("d").ipv4())),
        "the source in plain IPv4 too: {line}"
    );
    let access = log_events(z, "connection complete");
    assert!(
        access.iter().all(|f| !f.to_string().contains("::ffff:")),
        "no IPv4-mapped address in the access log: {access:?}"
    );
    let opened = metric(
        z,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/outside/sa/d\"",
            "destination_workload=\"c\"",
        ],
    );
    assert_eq!(opened, 1, "the CONNECT counted as a connection to c");
}
