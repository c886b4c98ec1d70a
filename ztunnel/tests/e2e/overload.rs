//! ztunnel under load anyone can cause (issue 17): at the file-descriptor limit its accept
//! loops back off instead of spinning; warnings outsiders can trigger are rate-limited but
//! every event is counted; unauthenticated TLS handshakes on 15008 are bounded.

use crate::support::*;
use amesh_identity::Identity;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

/// Sets the soft RLIMIT_NOFILE of a running process (`prlimit`, util-linux).
fn limit_open_files(pid: u32, limit: usize) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// Leaves `z` a few descriptors (its soft RLIMIT_NOFILE lowered), then opens more admin
/// connections than that: it accepts what it can (each held until its request or the 10 s
/// timeout), the rest wait in the backlog and every accept() fails with EMFILE. Connections
/// from pod `d` to `c_app` then meet the same in the pod's plaintext listener.
fn exhaust_descriptors(mesh: &Mesh, z: &ZtunnelProcess, c_app: SocketAddr) -> Vec<TcpStream> {
    let pid = z.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    limit_open_files(pid, open + 8);
    let admin = z.endpoint("Admin");
    let mut held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    held.extend((0..4).map(|_| connect_from(mesh, "d", c_app)));
    held
}

/// The `listener`s' accept errors counted in `/metrics`, once it answers again.
fn accept_errors(z: &ZtunnelProcess, listeners: &[&str]) -> Vec<u64> {
    let (status, metrics) = wait_for("/metrics again", Duration::from_secs(15), || {
        z.try_http("Metrics", "GET", "/metrics")
            .map_err(|e| e.to_string())
    });
    assert_eq!(status, 200, "{metrics}");
    let count = |l: &&str| {
        let label = format!("listener=\"{l}\"");
        metric_value(&metrics, "amesh_accept_errors_total", &[&label]).unwrap_or(0)
    };
    listeners.iter().map(count).collect()
}

#[test]
fn at_the_descriptor_limit_accept_errors_back_off_are_counted_and_logged_rarely() {
    let mesh = Mesh::new(&[pod("c", "ns-c", "node1"), outside("d")]);
    let _apps = mesh.apps(&["c"]);
    let z = &mesh.node("node1").ztunnel;
    let c_app = mesh.v4("c", APP_PORT);
    let held = exhaust_descriptors(&mesh, z, c_app);
    wait_for("an accept warning", Duration::from_secs(5), || {
        let n = log_events(z, "accept failed").len();
        (n > 0).then_some(()).ok_or_else(|| z.log())
    });
    // A measurement window, not synchronisation: the listeners keep failing throughout it,
    // and what they log over it must stay a handful of lines (a bare retry writes millions).
    std::thread::sleep(Duration::from_secs(3));
    let lines = log_events(z, "accept failed");
    assert!(
        lines.len() <= 6,
        "two listeners failing for seconds, at most one line each per 5 s; got {}: {:?}",
        lines.len(),
        &lines[..3]
    );
    for listener in ["admin", "plaintext"] {
        let event = lines.iter().find(|f| f["listener"] == listener);
        let error = event.and_then(|f| f["error"].as_str()).unwrap_or_default();
        assert!(
            error.contains("Too many open files"),
            "{listener}: the reason is logged: {lines:?}"
        );
    }

    drop(held);
    // Served again once descriptors are free; every error was counted (a few a second with
    // the backoff, where a bare retry counts millions).
    let listeners = ["admin", "plaintext"];
    for (listener, n) in listeners.iter().zip(accept_errors(z, &listeners)) {
        assert!((1..200).contains(&n), "{listener}: {n} accept errors");
    }
    let served = wait_for("d -> c served again", Duration::from_secs(15), || {
        mesh.try_connect_one("d", c_app)
    });
    assert_eq!(served.served_by(), "c-app");
}

#[test]
fn plaintext_at_ztunnel_ports_is_counted_every_time_and_warned_about_rarely() {
    let mesh = Mesh::new(&[pod("c", "ns-c", "node1"), outside("d")]);
    let z = &mesh.node("node1").ztunnel;
    let target = mesh.v4("c", 15006);
    let refused = mesh
        .pod("d")
        .run(|| {
            (0..200)
                .filter(|_| {
                    let Ok(mut conn) = TcpStream::connect(target) else {
                        return false;
                    };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    // ztunnel closes it unanswered.
                    matches!(conn.read(&mut [0u8; 16]), Ok(0))
                })
                .count()
        })
        .unwrap();
    assert_eq!(refused, 200, "every attempt closed unanswered");
    let labels = ["listener=\"plaintext\"", "reason=\"ztunnel_port\""];
    wait_for("200 refusals counted", Duration::from_secs(10), || {
        let n = metric(z, "amesh_connections_refused_total", &labels);
        (n == 200).then_some(()).ok_or(format!("{n} counted"))
    });
    let warnings = log_events(
        z,
        "refusing plaintext to one of ztunnel's own ports (it would loop)",
    );
    assert!(
        (1..=4).contains(&warnings.len()),
        "200 attempts, a few warnings: {warnings:?}"
    );
}

/// `n` TLS handshakes from pod `d` to `hbone` that never finish: a TLS record header whose
/// ClientHello never comes.
fn stuck_handshakes(mesh: &Mesh, hbone: SocketAddr, n: usize) -> Vec<TcpStream> {
    let stuck = |_| {
        let mut s = connect_from(mesh, "d", hbone);
        s.write_all(b"\x16\x03\x01\x02\x00").unwrap();
        s
    };
    (0..n).map(stuck).collect()
}

#[test]
fn hbone_handshakes_over_the_cap_are_closed_at_once_and_counted() {
    let mesh = Mesh::with_args(
        &[pod("c", "ns-c", "node1"), outside("d")],
        &[("node1", &["--max-hbone-handshakes", "2"])],
    );
    let _apps = mesh.apps(&["c"]);
    let z = &mesh.node("node1").ztunnel;
    let hbone = mesh.v4("c", 15008);
    let in_progress = || metric(z, "amesh_hbone_handshakes_in_progress", &[]);
    let stuck = stuck_handshakes(&mesh, hbone, 2);
    wait_for("two handshakes in progress", Duration::from_secs(5), || {
        let n = in_progress();
        (n == 2).then_some(()).ok_or(format!("{n} in progress"))
    });
    // A third is closed at once (not held for the 10 s handshake timeout), with its reason.
    let mut extra = connect_from(&mesh, "d", hbone);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let closed = extra.read(&mut [0u8; 16]);
    assert!(
        matches!(closed, Ok(0)),
        "closed, not left waiting: {closed:?} after {:?}",
        started.elapsed()
    );
    let labels = ["listener=\"hbone\"", "reason=\"handshake_limit\""];
    assert_eq!(metric(z, "amesh_connections_refused_total", &labels), 1);
    assert_eq!(in_progress(), 2, "the stuck ones still hold their slots");

    // Once they go away, a proper HBONE client gets through.
    drop(stuck);
    wait_for("the slots released", Duration::from_secs(5), || {
        let n = in_progress();
        (n == 0).then_some(()).ok_or(format!("{n} in progress"))
    });
    let reply = hbone_line(
        &mesh,
        "d",
        hbone,
        Identity::new("cluster.local", "ns-c", "c"),
        &mesh.v4("c", APP_PORT).to_string(),
    )
    .unwrap();
    assert!(reply.starts_with("served-by=c-app"), "{reply}");
    assert_eq!(metric(z, "amesh_connections_refused_total", &labels), 1);
}
