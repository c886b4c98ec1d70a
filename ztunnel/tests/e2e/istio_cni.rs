//! amesh's ztunnel under istio-cni: the node's pods set up by istio-cni's in-pod iptables
//! rules (no eBPF capture on that node), handed over ZDS; ztunnel runs with
//! `--capture iptables` and takes original destinations from `SO_ORIGINAL_DST`. The other
//! node runs amesh's eBPF capture: the two kinds of node make one mesh.

use crate::support::*;
use std::time::Duration;

#[test]
fn under_istio_cni_redirected_traffic_is_meshed_both_ways_and_plaintext_is_served() {
    let mut mesh = Mesh::try_build(&[
        pod("a", "ns-a", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ])
    .unwrap();
    mesh.try_start_node_under_istio_cni("node1", &[]).unwrap();
    mesh.try_start_node("node2", &[]).unwrap();
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node).unwrap();
    }
    let _apps = mesh.apps(&["a", "c", "d"]);
    let (n1, n2) = (&mesh.node("node1").ztunnel, &mesh.node("node2").ztunnel);
    let opened = |z: &ZtunnelProcess, labels: &[&str]| {
        let n = metric(z, "istio_tcp_connections_opened_total", labels);
        (n, z.http("Metrics", "GET", "/metrics").1)
    };

    // a's connection, REDIRECTed to 15001 by iptables, goes over HBONE as a.
    assert_eq!(
        mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
        "c-app"
    );
    let from_a = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    wait_for(
        "c's ztunnel counting a's connection",
        Duration::from_secs(10),
        || match metric(n2, "istio_tcp_connections_opened_total", &from_a) {
            1 => Ok(()),
            n => Err(format!("{n}: {}", n2.http("Metrics", "GET", "/metrics").1)),
        },
    );
    // Into a over HBONE from the eBPF node.
    assert_eq!(
        mesh.connect_one("c", mesh.v4("a", APP_PORT)).served_by(),
        "a-app"
    );
    let (n, all) = opened(
        n1,
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/ns-c/sa/c\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert_eq!(n, 1, "{all}");
    // Plaintext from outside the mesh, REDIRECTed to 15006: served at its original
    // destination.
    assert_eq!(
        mesh.connect_one("d", mesh.v4("a", APP_PORT)).served_by(),
        "a-app"
    );
    let (n, all) = opened(
        n1,
        &[
            "reporter=\"destination\"",
            "destination_workload=\"a\"",
            "connection_security_policy=\"unknown\"",
        ],
    );
    assert_eq!(n, 1, "{all}");
    // Out of the mesh: plain TCP from a's ztunnel, whose marked socket istio-cni's rules let
    // through (unmarked, it would loop back into 15001).
    assert_eq!(
        mesh.connect_one("a", mesh.v4("d", APP_PORT)).served_by(),
        "d-app"
    );
    // DNS that istio-cni redirects to 15053 reaches ztunnel's DNS proxy, not d: d listens
    // on 53 (UDP and TCP) but never answers, so only the proxy can. The query is malformed
    // (a question count of 1, no question): FORMERR, with its id.
    let d = mesh.pod("d").ipv4();
    let _d53 = mesh
        .pod("d")
        .run(|| {
            Ok::<_, std::io::Error>((
                std::net::UdpSocket::bind("0.0.0.0:53")?,
                std::net::TcpListener::bind("0.0.0.0:53")?,
            ))
        })
        .unwrap()
        .unwrap();
    let dns = mesh
        .pod("a")
        .run(move || {
            let udp = std::net::UdpSocket::bind("0.0.0.0:0")?;
            udp.set_read_timeout(Some(Duration::from_secs(5)))?;
            udp.connect((d, 53))?;
            udp.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")?;
            let mut buf = [0u8; 512];
            let udp_answer = udp
                .recv(&mut buf)
                .map(|n| (n, buf[0], buf[1], buf[3] & 0x0f))
                .map_err(|e| e.kind());
            let tcp = std::net::TcpStream::connect_timeout(&(d, 53).into(), Duration::from_secs(5))
                .map(drop)
                .map_err(|e| e.kind());
            Ok::<_, std::io::Error>((udp_answer, tcp))
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        dns,
        (Ok((12, 0x12, 0x34, 1)), Ok(())),
        "DNS is redirected to ztunnel's proxy on 15053, UDP and TCP (d never answers)"
    );
    // Aimed at ztunnel's own plaintext port: refused, with the reason counted.
    let r = mesh
        .connect("d", &["--timeout-ms", "2000"], &[mesh.v4("a", 15006)])
        .remove(0);
    assert!(
        r.outcome.is_err(),
        "a connection to 15006 itself must be refused"
    );
    assert_eq!(
        metric(
            n1,
            "amesh_connections_refused_total",
            &["listener=\"plaintext\"", "reason=\"ztunnel_port\""],
        ),
        1,
        "{}",
        n1.http("Metrics", "GET", "/metrics").1
    );
}
