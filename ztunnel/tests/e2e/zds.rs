//! ZDS from the node agent's side: bad messages (and a keep after the snapshot, a protocol
//! error to Istio's ztunnel) are NACKed and change nothing; removing a pod closes its
//! connections; a snapshot keeps the pods it mentions (added or kept) and drops the rest.

use crate::support::*;
use prost::Message;
use std::{os::fd::AsFd, time::Duration};

#[test]
fn bad_messages_are_nacked_and_change_nothing() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), pod("b", "ns-b", "node1")]);
    let _apps = mesh.apps(&["b"]);
    let agent = &mesh.node("node1").agent;
    let netns = mesh.pod("a").netns().as_fd();
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let add = |fds: &[std::os::fd::BorrowedFd<'_>]| {
        let msg = amesh_proto::zds::WorkloadRequest {
            payload: Some(amesh_proto::zds::workload_request::Payload::Add(
                amesh_proto::zds::AddWorkload {
                    uid: "x".into(),
                    workload_info: Some(amesh_proto::zds::WorkloadInfo {
                        name: "x".into(),
                        namespace: "ns".into(),
                        service_account: "x".into(),
                    }),
                },
            )),
        };
        agent.send_raw(&msg.encode_to_vec(), fds).unwrap()
    };
    let nack = |r: Result<(), String>, want: &str| {
        let reason = r.expect_err("a NACK");
        assert!(
            reason.contains(want),
            "NACK {reason:?} should mention {want:?}"
        );
    };
    nack(add(&[]), "exactly one");
    nack(add(&[netns, netns]), "exactly one");
    nack(add(&[file.as_fd()]), "not a network namespace");
    nack(
        agent.send_raw(b"\xff\xff\xff garbage", &[]).unwrap(),
        "malformed",
    );
    // Only an unknown field (6): decodes, but asks for nothing. (A zero-length packet cannot
    // be sent: on SEQPACKET it reads as the peer hanging up.)
    nack(agent.send_raw(&[0x30, 0x01], &[]).unwrap(), "empty");
    // A keep after the snapshot is a protocol error (Istio's ztunnel stops on it): refused.
    nack(
        agent.keep("no-such-pod").unwrap(),
        "keep after the snapshot",
    );
    let del = amesh_proto::zds::WorkloadRequest {
        payload: Some(amesh_proto::zds::workload_request::Payload::Del(
            amesh_proto::zds::DelWorkload { uid: "x".into() },
        )),
    };
    nack(
        agent.send_raw(&del.encode_to_vec(), &[netns]).unwrap(),
        "descriptor",
    );
    // Nothing changed: the mesh still works.
    nack(
        agent.keep(&uid(mesh.spec("a"))).unwrap(),
        "keep after the snapshot",
    );
    assert_eq!(
        mesh.connect_one("a", mesh.v4("b", APP_PORT)).served_by(),
        "b-app"
    );
}

#[test]
fn removing_a_pod_closes_its_connections_and_stops_its_traffic() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")]);
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("c"),
        &["[::]:8080".parse().unwrap()],
    )
    .unwrap();
    // A long-lived connection from a, captured and held open by a piping client.
    let target = mesh.v4("c", APP_PORT);
    let mut pipe = amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("a"), target).unwrap();
    pipe.send_line("ping").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("ping")
    );

    assert_eq!(
        mesh.node("node1").agent.del(&uid(mesh.spec("a"))).unwrap(),
        Ok(())
    );
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("closed"),
        "the connection closes when its pod is removed"
    );
    // a is still enrolled in capture but no ztunnel serves it: its traffic is refused.
    let r = mesh
        .connect("a", &["--timeout-ms", "2000"], &[target])
        .remove(0);
    assert!(r.outcome.is_err(), "{r:?}");
}

#[test]
fn a_snapshot_drops_pods_it_does_not_mention_and_re_adding_a_pod_keeps_its_connections() {
    let mut mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        outside("d"),
    ]);
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("b"),
        &["[::]:8080".parse().unwrap()],
    )
    .unwrap();
    // A connection into b that must survive the agent reconnecting and re-sending b.
    let mut pipe =
        amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("d"), mesh.v4("b", APP_PORT)).unwrap();
    let node = mesh.nodes.iter_mut().find(|n| n.name == "node1").unwrap();
    // The agent reconnects (ztunnel retries) and sends a snapshot with only b.
    node.agent.hang_up();
    node.agent.accept().unwrap();
    let b = mesh.specs.iter().position(|s| s.name == "b").unwrap();
    let (node, s) = (&mesh.nodes[0], &mesh.specs[b]);
    let answer = node
        .agent
        .add(
            &uid(s),
            s.name,
            s.namespace,
            s.service_account,
            mesh.pods[b].netns().as_fd(),
        )
        .unwrap();
    assert_eq!(answer, Ok(()));
    assert_eq!(node.agent.snapshot_sent().unwrap(), Ok(()));
    let (_, dump) = node.ztunnel.http("Admin", "GET", "/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["pods"],
        serde_json::json!([uid(s)]),
        "only b is served now"
    );
    pipe.send_line("still-open").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("still-open"),
        "re-adding b did not restart it"
    );
    let r = mesh
        .connect("a", &["--timeout-ms", "2000"], &[mesh.v4("b", APP_PORT)])
        .remove(0);
    assert!(r.outcome.is_err(), "a is no longer served: {r:?}");
}

#[test]
fn after_a_reconnect_the_snapshot_keeps_the_pods_it_mentions_and_drops_the_rest() {
    let mut mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
    ]);
    let _apps = mesh.apps(&["c"]);
    let (a, b) = (uid(mesh.spec("a")), uid(mesh.spec("b")));
    let node = mesh.nodes.iter_mut().find(|n| n.name == "node1").unwrap();
    // The agent goes away and comes back (as after its restart): ztunnel reconnects, and the
    // new snapshot has only `a`, as a keep (the agent lost its namespace, not the pod).
    node.agent.hang_up();
    node.agent.accept().unwrap();
    assert_eq!(node.agent.keep(&a).unwrap(), Ok(()));
    assert_eq!(node.agent.snapshot_sent().unwrap(), Ok(()));
    // The snapshot's ACK comes once the rest are dropped.
    let (_, dump) = node.ztunnel.http("Admin", "GET", "/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["pods"],
        serde_json::json!([a]),
        "only a is served now (b, {b}, was not mentioned)"
    );
    // Istio's workload-manager metrics tell the same: two started, b stopped, one active.
    let (_, metrics) = node.ztunnel.http("Metrics", "GET", "/metrics");
    for (name, want) in [
        ("istio_proxies_started_total", 2),
        ("istio_proxies_stopped_total", 1),
        ("istio_active_proxy_count", 1),
        ("istio_pending_proxy_count", 0),
    ] {
        assert_eq!(metric_value(&metrics, name, &[]), Some(want), "{name}");
    }
    // `a` kept its proxy all along.
    assert_eq!(
        mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
        "c-app"
    );
}
