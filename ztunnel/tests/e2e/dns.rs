//! ztunnel's DNS proxy end to end: an enrolled pod's queries, captured in the kernel, are
//! answered by ztunnel for the mesh's names and forwarded to a real upstream resolver
//! (dnsmasq, in a namespace outside the mesh) for the rest, over UDP and TCP; a pod with
//! DNS capture off asks the upstream itself.

use crate::support::*;
use amesh_testbed::PodProcess;
use std::time::Duration;

/// Where the enrolled pods think their resolver is: nothing listens there, only the capture
/// can answer.
const CLUSTER_DNS: &str = "10.96.0.53";

/// dnsmasq in pod `dns`: authoritative for `outside.test` (api: 198.51.100.7, TTL 60),
/// NXDOMAIN for `nowhere.test`, nothing else; each query logged on stderr.
fn dnsmasq(mesh: &Mesh) -> PodProcess {
    dnsmasq_with(
        mesh,
        &[
            "--address=/api.outside.test/198.51.100.7".into(),
            "--address=/nowhere.test/".into(),
        ],
        "api.outside.test",
    )
}

/// dnsmasq in pod `dns` with `records` (its `--address` options), answering only what they
/// say and logging each query on stderr; ready once it answers `probe`.
fn dnsmasq_with(mesh: &Mesh, records: &[String], probe: &str) -> PodProcess {
    let ip = mesh.pod("dns").ipv4();
    let mut cmd = mesh.pod("dns").command("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-queries",
        "--log-facility=-",
        "--local-ttl=60",
        "--port=53",
    ])
    .args(records)
    .arg(format!("--listen-address={ip}"));
    let server = mesh.pod("dns").spawn(cmd).expect("dnsmasq");
    wait_for("dnsmasq answering", Duration::from_secs(10), || {
        let (status, _) = dig(mesh, "dns", &[&format!("@{ip}"), probe]);
        if status == "NOERROR" {
            Ok(())
        } else {
            Err(format!("{status}: {}", server.stderr()))
        }
    });
    server
}

/// `dig` from pod `from`: (status, answer lines).
fn dig(mesh: &Mesh, from: &str, args: &[&str]) -> (String, Vec<String>) {
    let out = mesh
        .pod(from)
        .command("dig")
        .args([
            "+tries=1",
            "+time=3",
            "+nocomments",
            "+noquestion",
            "+nostats",
        ])
        .args(["+noauthority", "+noadditional", "+nocmd"])
        .args(args)
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The status comes from a second, terse run of the same query.
    let head = mesh
        .pod(from)
        .command("dig")
        .args(["+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("run dig");
    let head = String::from_utf8_lossy(&head.stdout).to_string();
    let status = head
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let answers = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (status, answers)
}

#[test]
fn pods_resolve_mesh_names_through_ztunnel_and_the_rest_through_the_upstream() {
    amesh_testbed::require_root();
    let specs = [
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        PodSpec {
            dns_capture: false,
            ..pod("c", "shop", "node1")
        },
        outside("dns"),
    ];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    let upstream = mesh.pod("dns").ipv4();
    std::fs::write(
        mesh.resolv_conf_path(),
        format!("nameserver {upstream}\noptions timeout:2\n"),
    )
    .expect("resolv.conf");
    mesh.try_start(&[]).expect("start the nodes");
    let server = dnsmasq(&mesh);
    let at = format!("@{CLUSTER_DNS}");
    let z = mesh.ztunnel("node1");
    let asked_upstream = |name: &str| {
        server
            .stderr()
            .matches(&format!("query[A] {name} from"))
            .count()
    };

    // The mesh's service: answered by ztunnel (the upstream never sees it), in its full
    // name, its short forms, and the search-path form with a CNAME.
    for name in ["web.shop.svc.cluster.local", "web", "web.shop"] {
        let (status, answers) = dig(&mesh, "a", &[&at, name]);
        assert_eq!(status, "NOERROR", "{name}: {answers:?}\n{}", z.log());
        assert_eq!(answers, [format!("{name}. 30 IN A {VIP}")], "{name}");
    }
    let (_, answers) = dig(
        &mesh,
        "a",
        &[&at, "web.shop.svc.cluster.local.shop.svc.cluster.local"],
    );
    assert_eq!(
        answers,
        [
            "web.shop.svc.cluster.local.shop.svc.cluster.local. 30 IN CNAME web.shop.svc.cluster.local.".to_string(),
            format!("web.shop.svc.cluster.local. 30 IN A {VIP}"),
        ]
    );
    // No IPv6 address: an empty NOERROR, not a forward.
    let (status, answers) = dig(&mesh, "a", &[&at, "AAAA", "web.shop.svc.cluster.local"]);
    assert_eq!(
        (status.as_str(), answers.len()),
        ("NOERROR", 0),
        "{answers:?}"
    );
    // Over TCP as well.
    let (_, answers) = dig(&mesh, "a", &["+tcp", &at, "web"]);
    assert_eq!(answers, [format!("web. 30 IN A {VIP}")]);
    assert_eq!(
        asked_upstream("web.shop.svc.cluster.local"),
        0,
        "{}",
        server.stderr()
    );
    assert_eq!(asked_upstream("web"), 0);

    // Anything else: the upstream's answer, through ztunnel (over UDP, and over TCP), then
    // from its cache; the upstream's NXDOMAIN comes back as it is.
    let (status, answers) = dig(&mesh, "a", &[&at, "api.outside.test"]);
    assert_eq!(status, "NOERROR", "{}\n{}", z.log(), server.stderr());
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].ends_with("IN A 198.51.100.7"), "{answers:?}");
    let before = asked_upstream("api.outside.test");
    assert!(before >= 1, "the upstream answered it: {}", server.stderr());
    let (_, answers) = dig(&mesh, "a", &["+tcp", &at, "TXT", "api.outside.test"]);
    assert!(answers.is_empty(), "{answers:?}");
    assert!(
        server.stderr().contains("query[TXT] api.outside.test from"),
        "a TCP query went upstream: {}",
        server.stderr()
    );
    let (status, _) = dig(&mesh, "a", &[&at, "api.outside.test"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(
        asked_upstream("api.outside.test"),
        before,
        "cached: {}",
        server.stderr()
    );
    let (status, _) = dig(&mesh, "a", &[&at, "x.nowhere.test"]);
    assert_eq!(status, "NXDOMAIN");

    // ztunnel asked from the pod's own address (its network path to its resolvers, as
    // Istio's ztunnel does). The pod with capture off asks the upstream itself and gets its
    // answer for the mesh's name too (dnsmasq does not know it).
    let a_ip = mesh.pod("a").ipv4().to_string();
    assert!(
        server
            .stderr()
            .contains(&format!("query[A] api.outside.test from {a_ip}")),
        "{}",
        server.stderr()
    );
    let (status, _) = dig(
        &mesh,
        "c",
        &[&format!("@{upstream}"), "web.shop.svc.cluster.local"],
    );
    assert_ne!(
        status, "NOERROR",
        "the upstream does not know the mesh's names"
    );
    let c_ip = mesh.pod("c").ipv4().to_string();
    assert!(
        server
            .stderr()
            .contains(&format!("query[A] web.shop.svc.cluster.local from {c_ip}")),
        "{}",
        server.stderr()
    );
    let (status, _) = dig(&mesh, "c", &[&at, "web"]);
    assert_eq!(
        status, "NO ANSWER",
        "nothing listens at {CLUSTER_DNS} for an uncaptured pod"
    );

    // Istio's DNS metrics, with its labels.
    let requests = metric(
        z,
        "istio_dns_requests_total",
        &["request_query_type=\"a\"", "request_protocol=\"udp\""],
    );
    assert!(requests >= 6, "requests {requests}");
    assert!(metric(z, "istio_dns_requests_total", &["request_protocol=\"tcp\""]) >= 2);
    assert!(
        metric(
            z,
            "istio_dns_upstream_requests_total",
            &["request_query_type=\"a\""]
        ) >= 2
    );
    assert_eq!(metric(z, "istio_dns_upstream_failures_total", &[]), 0);
    assert!(metric(z, "istio_dns_upstream_request_duration_seconds_count", &[]) >= 2);
}

#[test]
fn garbage_and_floods_on_the_dns_proxy_are_contained() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&[
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
    ])
    .expect("build the mesh");
    mesh.try_start(&[]).expect("start the nodes");
    let at = format!("@{CLUSTER_DNS}");
    // Garbage of every size, over UDP and TCP, from inside the pod.
    let target: std::net::SocketAddr = format!("{CLUSTER_DNS}:53").parse().unwrap();
    for payload in ["x", "0123456789abcdef", &"\u{ff}".repeat(600)] {
        let out = mesh
            .pod("a")
            .command(amesh_testbed::probe::sibling_binary("amesh-probe"))
            .args(["udp", &target.to_string(), payload])
            .output()
            .expect("probe");
        let text = String::from_utf8_lossy(&out.stdout);
        // A 16-byte "query" has a header: FORMERR (its id echoed); shorter or garbled ones
        // may get nothing; none may crash the proxy.
        assert!(text.contains("reply=") || text.contains("error="), "{text}");
    }
    // A TCP client that sends a line of text (a length prefix of 0x7465, then too few
    // bytes): closed after the idle timeout, nothing else.
    let _ = mesh.connect("a", &["--timeout-ms", "500"], &[target]);
    use std::io::Write;
    // A flood of well-formed queries for a forwarded name (no upstream: SERVFAIL) from one
    // pod; the proxy still answers the mesh's names afterwards.
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(
            mesh.pod("a")
                .command("dig")
                .args(["+tries=1", "+time=2", &at, "-f", "/dev/stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("dig"),
        );
    }
    for child in &mut flood {
        if let Some(mut stdin) = child.stdin.take() {
            let names: String = (0..50).map(|i| format!("n{i}.example.invalid\n")).collect();
            let _ = stdin.write_all(names.as_bytes());
        }
    }
    for mut child in flood {
        let _ = child.wait();
    }
    let (status, answers) = dig(&mesh, "a", &[&at, "web"]);
    assert_eq!(status, "NOERROR", "{answers:?}");
    assert_eq!(answers, [format!("web. 30 IN A {VIP}")]);
    let z = mesh.ztunnel("node1");
    assert!(
        metric(z, "istio_dns_upstream_failures_total", &[]) >= 1,
        "no upstream: SERVFAIL"
    );
    assert!(z.log().contains("DNS query failed upstream"), "{}", z.log());
}

#[test]
fn service_entries_resolve_route_and_are_all_that_registry_only_lets_out() {
    amesh_testbed::require_root();
    let specs = [pod("a", "shop", "node1"), outside("ext"), outside("dns")];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    let ext = mesh.pod("ext").ipv4();
    let upstream = mesh.pod("dns").ipv4();
    std::fs::write(mesh.resolv_conf_path(), format!("nameserver {upstream}\n"))
        .expect("resolv.conf");
    // Two external services: one by address (STATIC), one by name (DNS, resolved through the
    // upstream when connecting); neither has an address of its own, so both get Istio's
    // auto-allocated VIPs (the older first).
    let entries = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}}
spec:
  hosts: [api.outside.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {APP_PORT}}}]
  resolution: STATIC
  endpoints: [{{address: {ext}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop, creationTimestamp: "2026-01-02T00:00:00Z"}}
spec:
  hosts: [db.outside.test]
  ports: [{{number: 80, name: tcp, targetPort: {APP_PORT}}}]
  resolution: DNS
"#
    );
    crate::waypoint::xds_edit(&mesh, |t| t + &entries);
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start(&[("node1", &["--outbound-traffic-policy", "REGISTRY_ONLY"])])
        .expect("start the nodes");
    mesh.try_wait_ready("node1").expect("ztunnel ready");
    let _apps = mesh.apps(&["ext", "dns"]);
    // dnsmasq: db.outside.test is ext.
    let server = dnsmasq_with(
        &mesh,
        &[format!("--address=/db.outside.test/{ext}")],
        "db.outside.test",
    );
    let at = format!("@{CLUSTER_DNS}");
    let z = mesh.ztunnel("node1");
    // The hosts resolve to their VIPs, answered by ztunnel from what the control plane sent.
    wait_for(
        "the ServiceEntry VIPs in DNS",
        Duration::from_secs(10),
        || {
            let (_, a) = dig(&mesh, "a", &[&at, "+short", "api.outside.test"]);
            (a == ["240.240.0.1"]).then_some(()).ok_or(format!("{a:?}"))
        },
    );
    let (_, db) = dig(&mesh, "a", &[&at, "+short", "db.outside.test"]);
    assert_eq!(db, ["240.240.0.2"]);
    let (_, v6) = dig(&mesh, "a", &[&at, "+short", "AAAA", "api.outside.test"]);
    assert_eq!(v6, ["2001:2::1"]);
    // Connections to the VIPs reach the external server as plain TCP: by address, and by
    // the name the upstream resolves.
    for vip in ["240.240.0.1:80", "240.240.0.2:80"] {
        let c = mesh.connect_one("a", vip.parse().unwrap());
        assert_eq!(c.served_by(), "ext-app", "{vip}");
    }
    assert!(
        server.stderr().contains("query[A] db.outside.test from"),
        "ztunnel resolved the endpoint: {}",
        server.stderr()
    );
    // The entry's endpoint is registered by its address too (a workload of the registry);
    // the resolver's host is in no registry: refused under REGISTRY_ONLY, with the reason
    // in the access log.
    assert_eq!(
        mesh.connect_one("a", mesh.v4("ext", APP_PORT)).served_by(),
        "ext-app"
    );
    let direct = mesh
        .connect("a", &["--timeout-ms", "3000"], &[mesh.v4("dns", APP_PORT)])
        .remove(0);
    assert!(direct.outcome.is_err(), "{direct:?}");
    wait_for(
        "the refusal in the access log",
        Duration::from_secs(5),
        || {
            let log = z.log();
            log.contains("outbound traffic policy REGISTRY_ONLY")
                .then_some(())
                .ok_or(log)
        },
    );
    assert!(
        metric(
            z,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"db.outside.test\""]
        ) >= 1,
        "metrics name the ServiceEntry host"
    );
}
