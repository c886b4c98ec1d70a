//! Traffic through the mesh: same node and across nodes, over HBONE with real mutual TLS.

use crate::support::*;
use amesh_testbed::{probe, sniff};
use std::time::Duration;

#[test]
fn traffic_between_pods_goes_over_hbone_on_one_node_and_across_nodes() {
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
    ]);
    let _apps = mesh.apps(&["b", "c"]);
    for (to, v6) in [("b", false), ("b", true), ("c", false), ("c", true)] {
        let target = if v6 {
            mesh.v6(to, APP_PORT)
        } else {
            mesh.v4(to, APP_PORT)
        };
        let c = mesh.connect_one("a", target);
        assert_eq!(c.served_by(), format!("{to}-app"), "{target}");
    }
    // Across nodes, the app's bytes never cross the wire in plaintext; port 15008 carries them.
    let sniffer = mesh.bed.sniff().expect("sniff");
    let target = mesh.v4("c", APP_PORT);
    assert_eq!(mesh.connect_one("a", target).served_by(), "c-app");
    let segments = sniffer.stop();
    assert!(
        !sniff::any_payload_contains(&segments, target.to_string().as_bytes()),
        "plaintext seen on the wire"
    );
    assert!(
        segments
            .iter()
            .any(|s| s.dst.port() == 15008 && !s.payload.is_empty()),
        "no HBONE traffic seen"
    );
    assert!(
        !segments.iter().any(|s| s.dst.port() == APP_PORT),
        "nothing goes to the app port on the wire"
    );
    // The capture programs on each node saw it: out of a on node1, into c on node2.
    let a_id = mesh
        .node("node1")
        .ebpf()
        .pods()
        .unwrap()
        .iter()
        .find(|p| p.addresses.contains(&mesh.v4("a", 0).ip()))
        .unwrap()
        .pod_id;
    let c_id = mesh.node("node2").ebpf().pods().unwrap()[0].pod_id;
    assert_eq!(
        mesh.node("node1")
            .ebpf()
            .counters(a_id)
            .unwrap()
            .outbound_captured,
        5
    );
    // Three app connections to c, but only two TCP connections reach it: one per destination
    // address (v4, v6); the third rode the pooled HBONE connection.
    assert_eq!(
        mesh.node("node2")
            .ebpf()
            .counters(c_id)
            .unwrap()
            .inbound_hbone,
        2
    );
    // The destination ztunnel saw the caller's SPIFFE identity.
    let log = mesh.node("node2").ztunnel.log();
    assert!(
        log.contains("spiffe://cluster.local/ns/ns-a/sa/a"),
        "node2 access log names the client: {log}"
    );
}

#[test]
fn one_byte_and_256_mib_cross_intact_both_ways_on_one_node_and_across() {
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
    ]);
    let any: std::net::SocketAddr = "[::]:8080".parse().unwrap();
    let _echo_b = probe::serve_echo(&mesh.probe, mesh.pod("b"), &[any]).unwrap();
    let _echo_c = probe::serve_echo(&mesh.probe, mesh.pod("c"), &[any]).unwrap();
    for to in ["b", "c"] {
        for bytes in [1, 256 << 20] {
            probe::bulk(&mesh.probe, mesh.pod("a"), mesh.v4(to, APP_PORT), bytes).unwrap();
        }
    }
}

#[test]
fn a_thousand_concurrent_connections_on_one_node_and_across() {
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
    ]);
    let _apps = mesh.apps(&["b", "c"]);
    for to in ["b", "c"] {
        let targets = vec![mesh.v4(to, APP_PORT); 1000];
        let results = mesh.connect("a", &["--timeout-ms", "30000"], &targets);
        let failed: Vec<_> = results.iter().filter(|r| r.outcome.is_err()).collect();
        assert!(
            failed.is_empty(),
            "to {to}: {} of 1000 failed, e.g. {:?}",
            failed.len(),
            failed.first()
        );
    }
}

#[test]
fn destinations_outside_the_mesh_get_plain_tcp() {
    let tcp = PodSpec {
        tcp: true,
        ..pod("t", "legacy", "node1")
    };
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), outside("d"), tcp]);
    let _apps = mesh.apps(&["d", "t"]);
    let sniffer = mesh.bed.sniff().expect("sniff");
    assert_eq!(
        mesh.connect_one("a", mesh.v4("d", APP_PORT)).served_by(),
        "d-app"
    );
    assert_eq!(
        mesh.connect_one("a", mesh.v4("t", APP_PORT)).served_by(),
        "t-app"
    );
    let segments = sniffer.stop();
    for to in ["d", "t"] {
        let syn = segments
            .iter()
            .find(|s| s.is_syn() && s.dst == mesh.v4(to, APP_PORT));
        assert!(syn.is_some(), "plain TCP to {to} expected on the wire");
    }
}

#[test]
fn a_service_vip_spreads_over_healthy_endpoints() {
    let svc = |p: PodSpec| PodSpec {
        in_service: true,
        ..p
    };
    let mesh = Mesh::new(&[
        pod("a", "shop", "node1"),
        svc(pod("b", "shop", "node1")),
        svc(pod("c", "shop", "node2")),
        svc(pod("e", "shop", "node2")),
        PodSpec {
            healthy: false,
            ..svc(pod("f", "shop", "node2"))
        },
    ]);
    let _apps = mesh.apps(&["b", "c", "e", "f"]);
    let vip: std::net::SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for r in mesh.connect("a", &[], &vec![vip; 30]) {
        seen.insert(r.outcome.unwrap().served_by().to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["b-app", "c-app", "e-app"]
    );
}

#[test]
fn an_application_tunnel_gets_a_proxy_v2_header_with_the_callers_identity() {
    use std::io::{BufRead, Read, Write};
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")]);
    // Istio's application_tunnel: c takes the PROXY protocol, on 15088.
    let c_uid = uid(mesh.spec("c"));
    mesh.try_update_config(&[], |t| {
        t.replace(
            &format!("- uid: {c_uid}\n"),
            &format!("- uid: {c_uid}\n  applicationTunnel: {{protocol: PROXY, port: 15088}}\n"),
        )
    })
    .unwrap();
    let n2 = &mesh.node("node2").ztunnel;
    wait_for("node2 holding c's tunnel", Duration::from_secs(10), || {
        let (_, dump) = n2.http("Admin", "GET", "/config_dump");
        if dump.contains("applicationTunnel") {
            Ok(())
        } else {
            Err(dump)
        }
    });
    let listener = mesh
        .pod("c")
        .run(|| std::net::TcpListener::bind("[::]:15088"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The fixed 16 bytes carry the length of the rest.
        let mut header = vec![0u8; 16];
        s.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes([header[14], header[15]]) as usize;
        let mut rest = vec![0u8; len];
        s.read_exact(&mut rest).unwrap();
        header.extend(rest);
        let parsed = ppp::v2::Header::try_from(&header[..]).unwrap();
        let addresses = match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => (
                std::net::SocketAddr::from((a.source_address, a.source_port)),
                std::net::SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            other => panic!("not IPv4 addresses: {other:?}"),
        };
        let identity: Vec<String> = parsed
            .tlvs()
            .filter_map(Result::ok)
            .filter(|t| t.kind == 0xD0)
            .map(|t| String::from_utf8_lossy(&t.value).into_owned())
            .collect();
        // Then the tunnel itself: the probe's line, answered.
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        s.write_all(b"served-by=proxied\n").unwrap();
        (addresses, identity, line)
    });
    let connected = mesh.connect_one("a", mesh.v4("c", APP_PORT));
    assert_eq!(connected.served_by(), "proxied");
    let ((src, dst), identity, line) = server.join().unwrap();
    assert_eq!(
        src.ip(),
        std::net::IpAddr::V4(mesh.pod("a").ipv4()),
        "the caller"
    );
    assert_eq!(
        dst,
        mesh.v4("c", APP_PORT),
        "the original destination, not 15088"
    );
    assert_eq!(identity, ["spiffe://cluster.local/ns/ns-a/sa/a"]);
    assert_eq!(
        line.trim_end(),
        mesh.v4("c", APP_PORT).to_string(),
        "then the tunnel's bytes"
    );
}
