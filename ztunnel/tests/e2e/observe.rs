//! What operators see and do: Istio-named metrics, the config dump, readiness, the admin
//! endpoint, live configuration reload, and draining on SIGTERM.

use crate::support::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[test]
fn metrics_config_dump_and_readiness_after_traffic() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")]);
    let _apps = mesh.apps(&["c"]);
    let (n1, n2) = (&mesh.node("node1").ztunnel, &mesh.node("node2").ztunnel);
    for _ in 0..100 {
        assert_eq!(
            mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
            "c-app"
        );
    }
    let src = [
        "reporter=\"source\"",
        "source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"",
        "destination_principal=\"spiffe://cluster.local/ns/ns-c/sa/c\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    // Bytes and closes are recorded when a connection's copy ends, which can be just after
    // the client saw its reply: wait until all 100 are closed on the source side too.
    let metrics = wait_for(
        "node1 counting 100 closed connections",
        Duration::from_secs(10),
        || {
            let (status, m) = n1.http("Metrics", "GET", "/metrics");
            match (
                status,
                metric_value(&m, "istio_tcp_connections_closed_total", &src),
            ) {
                (200, Some(100)) => Ok(m),
                _ => Err(format!("{status}: {m}")),
            }
        },
    );
    assert_eq!(
        metric_value(&metrics, "amesh_hbone_tls_handshakes_total", &[]),
        Some(1),
        "100 sequential connections, one TLS handshake:\n{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "istio_tcp_connections_opened_total", &src),
        Some(100),
        "{metrics}"
    );
    // Each client sent "<target>\n" and got a longer reply: Istio's naming counts
    // client -> server as received and server -> client as sent.
    let request = format!("{}\n", mesh.v4("c", APP_PORT)).len() as u64;
    assert_eq!(
        metric_value(&metrics, "istio_tcp_received_bytes_total", &src),
        Some(100 * request),
        "{metrics}"
    );
    assert!(metric_value(&metrics, "istio_tcp_sent_bytes_total", &src).unwrap() > 100 * request);
    // Closing is recorded when the copy ends, just after the client saw its reply.
    let dst = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"",
        "destination_workload=\"c\"",
    ];
    let m2 = wait_for(
        "node2 counting 100 closed connections",
        Duration::from_secs(10),
        || {
            let (_, m2) = n2.http("Metrics", "GET", "/metrics");
            match metric_value(&m2, "istio_tcp_connections_closed_total", &dst) {
                Some(100) => Ok(m2),
                _ => Err(m2),
            }
        },
    );
    assert_eq!(
        metric_value(&m2, "istio_tcp_connections_opened_total", &dst),
        Some(100)
    );

    let (status, dump) = n1.http("Admin", "GET", "/config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{dump}");
    let cert = &dump["certificates"][0];
    assert_eq!(cert["identity"], "spiffe://cluster.local/ns/ns-a/sa/a");
    assert_eq!(cert["state"], "Available");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(cert["expiry"].as_u64().unwrap() > now + 3600, "{cert}");
    assert_eq!(dump["pods"][0], uid(mesh.spec("a")));
    assert_eq!(n1.http("Readiness", "GET", "/healthz/ready").0, 200);
    assert_istio_shaped_dump(&mesh, &dump);

    // The same views from `amesh ztunnel-config`, for users without istioctl.
    let admin = n1.try_endpoint("Admin").unwrap().to_string();
    let amesh = |view: &str| {
        let out = std::process::Command::new(amesh_testbed::probe::sibling_binary("amesh"))
            .args(["ztunnel-config", view, "--admin", &admin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let workloads = amesh("workloads");
    let a_row = format!("ns-a        a          {},", mesh.pod("a").ipv4());
    assert!(
        workloads.starts_with("NAMESPACE   POD NAME") && workloads.contains(&a_row),
        "{workloads}"
    );
    assert!(workloads.contains("HBONE"), "{workloads}");
    let certs = amesh("certificates");
    assert!(
        certs.contains("spiffe://cluster.local/ns/ns-a/sa/a   Leaf   Available   true"),
        "{certs}"
    );
    // A ztunnel that is not there is named, with the reason.
    let out = std::process::Command::new(amesh_testbed::probe::sibling_binary("amesh"))
        .args(["ztunnel-config", "all", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("connecting to ztunnel's admin endpoint 127.0.0.1:1"),
        "{err}"
    );
}

/// What `istioctl ztunnel-config` reads from Istio's ztunnel, read from ours.
fn assert_istio_shaped_dump(mesh: &Mesh, dump: &serde_json::Value) {
    use base64::Engine as _;
    let a_uid = uid(mesh.spec("a"));
    let a = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uid"] == a_uid.as_str())
        .unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(
        a["workloadIps"],
        serde_json::json!([
            mesh.pod("a").ipv4().to_string(),
            mesh.pod("a").ipv6().to_string()
        ]),
        "{a}"
    );
    for (key, want) in [
        ("protocol", "HBONE"),
        ("name", "a"),
        ("namespace", "ns-a"),
        ("serviceAccount", "a"),
        ("workloadName", "a"),
        ("workloadType", "pod"),
        ("canonicalName", "a"),
        ("canonicalRevision", "v1"),
        ("clusterId", "Kubernetes"),
        ("trustDomain", "cluster.local"),
        ("node", "node1"),
        ("status", "Healthy"),
    ] {
        assert_eq!(a[key], want, "{key} in {a}");
    }
    let cert = &dump["certificates"][0];
    let leaf = &cert["certChain"][0];
    let pem = base64::engine::general_purpose::STANDARD
        .decode(leaf["pem"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(pem)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n"),
        "{leaf}"
    );
    let expires = leaf["expirationTime"].as_str().unwrap();
    assert!(
        expires.len() == 20 && expires.ends_with('Z') && expires.as_bytes()[10] == b'T',
        "RFC 3339: {leaf}"
    );
    assert!(
        leaf["serialNumber"]
            .as_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()),
        "{leaf}"
    );
    assert_eq!(
        cert["rootCerts"].as_array().map(Vec::len),
        Some(1),
        "the mesh root, apart from the chain: {cert}"
    );
    let state = &dump["workloadState"][a_uid.as_str()];
    assert_eq!(state["state"], "Up", "{dump}");
    assert_eq!(state["info"]["serviceAccount"], "a", "{state}");
    assert_eq!(state["info"]["trustDomain"], "cluster.local", "{state}");
    let web = &dump["services"][0];
    assert_eq!(web["hostname"], "web.shop.svc.cluster.local", "{web}");
    assert_eq!(web["vips"], serde_json::json!([format!("/{VIP}")]), "{web}");
    assert_eq!(web["ports"], serde_json::json!({"80": 8080}), "{web}");
    assert_eq!(web["ipFamilies"], "IPv4", "{web}");
    assert!(web["endpoints"].is_object(), "{web}");
}

#[test]
fn readiness_waits_for_the_node_agent_and_the_admin_endpoint_copes_with_garbage() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1")]);
    // A ztunnel whose node agent never answers is not ready, and says why.
    let mut lonely = mesh
        .spawn_ztunnel(
            "lonely",
            &mesh.config_path(),
            &mesh.bed.pin_root().join("node1"),
            &[],
        )
        .unwrap();
    let (status, body) = lonely.http("Readiness", "GET", "/healthz/ready");
    assert_eq!(status, 503);
    assert!(body.contains("node agent snapshot"), "{body}");
    assert_eq!(lonely.http("Admin", "POST", "/quitquitquit").0, 200);
    let status = lonely
        .wait_exit(Duration::from_secs(10))
        .expect("quitquitquit stops ztunnel");
    assert!(status.success(), "{status:?}");

    let z = &mesh.node("node1").ztunnel;
    assert_eq!(z.http("Admin", "POST", "/logging?level=debug").0, 200);
    assert_eq!(z.http("Admin", "POST", "/logging?level=[nonsense").0, 400);
    assert_eq!(z.http("Admin", "GET", "/nowhere").0, 404);
    assert_eq!(z.http("Admin", "DELETE", "/config_dump").0, 405);
    assert_eq!(
        http_raw(z.endpoint("Admin"), b"\x16\x03\x01garbage\r\n\r\n").0,
        400
    );
    assert_eq!(
        z.http("Admin", "GET", "/config_dump").0,
        200,
        "still serving after garbage"
    );
}

#[test]
fn the_configuration_file_reloads_live_and_a_bad_one_is_rejected_with_its_field() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1")]);
    let z = &mesh.node("node1").ztunnel;
    let workloads = |z: &ZtunnelProcess| {
        let (_, dump) = z.http("Admin", "GET", "/config_dump");
        let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
        v["workloads"].as_array().unwrap().len()
    };
    assert_eq!(workloads(z), 1);
    let mut text = std::fs::read_to_string(mesh.config_path()).unwrap();
    text = text.replacen(
        "workloads:\n",
        "workloads:\n- {uid: extra, name: extra, namespace: ns-x, addresses: [10.200.99.1]}\n",
        1,
    );
    std::fs::write(mesh.config_path(), &text).unwrap();
    wait_for("the reload", Duration::from_secs(10), || {
        match workloads(z) {
            2 => Ok(()),
            n => Err(format!("{n} workloads")),
        }
    });
    std::fs::write(mesh.config_path(), text.replace("10.200.99.1", "10.200.99")).unwrap();
    wait_for("the rejection logged", Duration::from_secs(10), || {
        let log = z.log();
        if log.contains("configuration rejected") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let log = z.log();
    assert!(
        log.contains("workloads[0].addresses[0]") && log.contains("not an IP address"),
        "{log}"
    );
    assert_eq!(workloads(z), 2, "the last good configuration stays");
}

#[test]
fn sigterm_drains_open_connections_and_refuses_new_ones() {
    let mut mesh = Mesh::with_args(
        &[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")],
        &[("node1", &["--drain-secs", "30"])],
    );
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("c"),
        &["[::]:8080".parse().unwrap()],
    )
    .unwrap();
    let mut pipe =
        amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("a"), mesh.v4("c", APP_PORT)).unwrap();
    let pid = mesh.node("node1").ztunnel.child.id();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // The established connection keeps working while ztunnel drains...
    pipe.send_line("still-here").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("still-here")
    );
    // ...new ones are refused...
    let r = mesh
        .connect("a", &["--timeout-ms", "2000"], &[mesh.v4("c", APP_PORT)])
        .remove(0);
    assert!(r.outcome.is_err(), "{r:?}");
    // ...and once it closes, ztunnel exits well before the deadline.
    drop(pipe);
    let node = mesh.nodes.iter_mut().find(|n| n.name == "node1").unwrap();
    let status = node
        .ztunnel
        .wait_exit(Duration::from_secs(10))
        .expect("ztunnel exits after the last connection");
    assert!(status.success(), "{status:?}");
}

#[test]
fn metrics_name_workloads_as_istio_does_and_hbone_carries_istios_metadata() {
    use amesh_hbone::metadata::{BAGGAGE, Baggage};
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ]);
    let _apps = mesh.apps(&["c"]);
    let (n1, n2) = (&mesh.node("node1").ztunnel, &mesh.node("node2").ztunnel);
    assert_eq!(
        mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
        "c-app"
    );
    // Both sides are known workloads: every name comes from the state, on both nodes.
    let known = [
        "source_workload=\"a\"",
        "source_canonical_service=\"a\"",
        "source_canonical_revision=\"v1\"",
        "source_workload_namespace=\"ns-a\"",
        "source_app=\"a\"",
        "source_version=\"v1\"",
        "source_cluster=\"Kubernetes\"",
        "destination_workload=\"c\"",
        "destination_canonical_service=\"c\"",
        "destination_canonical_revision=\"v1\"",
        "destination_app=\"c\"",
        "destination_version=\"v1\"",
        "destination_cluster=\"Kubernetes\"",
        "source_region=\"unknown\"",
        "destination_zone=\"unknown\"",
    ];
    for (z, reporter) in [
        (n1, "reporter=\"source\""),
        (n2, "reporter=\"destination\""),
    ] {
        let mut want = known.to_vec();
        want.push(reporter);
        wait_for(
            &format!("{reporter} counting the connection closed with Istio's names"),
            Duration::from_secs(10),
            || match metric(z, "istio_tcp_connections_closed_total", &want) {
                1 => Ok(()),
                _ => Err(z.http("Metrics", "GET", "/metrics").1),
            },
        );
    }

    // A caller the state does not know is named from its baggage; its principal still
    // comes from its certificate. The answer describes the destination in baggage.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        BAGGAGE,
        "k8s.cluster.name=east,k8s.namespace.name=ns-d,k8s.deployment.name=dapp,\
         service.name=dsvc,service.version=v7,cloud.region=eu"
            .parse()
            .unwrap(),
    );
    let (reply, answer) = hbone_exchange(
        &mesh,
        "d",
        mesh.v4("c", 15008),
        amesh_identity::Identity::new("cluster.local", "ns-c", "c"),
        &mesh.v4("c", APP_PORT).to_string(),
        headers,
    )
    .unwrap();
    assert!(reply.starts_with("served-by=c-app"), "{reply}");
    assert_eq!(
        Baggage::parse(&answer),
        Baggage {
            cluster: "Kubernetes".into(),
            namespace: "ns-c".into(),
            workload_kind: "pod".into(),
            workload_name: "c".into(),
            service_name: "c".into(),
            service_version: "v1".into(),
            region: String::new(),
            zone: String::new(),
        },
        "{answer:?}"
    );
    let derived = [
        "reporter=\"destination\"",
        "source_workload=\"dapp\"",
        "source_canonical_service=\"dsvc\"",
        "source_canonical_revision=\"v7\"",
        "source_workload_namespace=\"ns-d\"",
        "source_cluster=\"east\"",
        "source_region=\"eu\"",
        "source_principal=\"spiffe://cluster.local/ns/outside/sa/d\"",
        "destination_workload=\"c\"",
    ];
    assert_eq!(
        metric(n2, "istio_tcp_connections_opened_total", &derived),
        1,
        "{}",
        n2.http("Metrics", "GET", "/metrics").1
    );

    // Sockets are counted while open: an app connection held open on node1's outbound
    // listener, then closed.
    let sockets = |z: &ZtunnelProcess, want: u64| {
        wait_for(
            &format!("{want} outbound socket(s) open on node1"),
            Duration::from_secs(10),
            || {
                let (_, m) = z.http("Metrics", "GET", "/metrics");
                match metric_value(&m, "istio_tcp_sockets_open", &["reporter=\"source\""]) {
                    Some(n) if n == want => Ok(()),
                    _ => Err(m),
                }
            },
        )
    };
    let held =
        amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("a"), mesh.v4("c", APP_PORT)).unwrap();
    sockets(n1, 1);
    drop(held);
    sockets(n1, 0);
    // Istio's build gauge, and its scrape path as an alias of /metrics.
    let (status, stats) = n2.http("Metrics", "GET", "/stats/prometheus");
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        metric_value(
            &stats,
            "istio_build",
            &[
                "component=\"ztunnel\"",
                &format!("tag=\"{}\"", env!("CARGO_PKG_VERSION"))
            ]
        ),
        Some(1),
        "{stats}"
    );
    assert!(
        stats.contains("istio_tcp_connections_opened_total"),
        "{stats}"
    );
}
