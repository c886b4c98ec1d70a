//! Istio's traffic API at the waypoint with real curl requests, after Istio's Bookinfo tasks:
//! `reviews` has subsets v1, v2, v3 and `slow` (a DestinationRule over pod labels); a
//! VirtualService routes the user `jason` to v2 by header, aborts and delays (fault
//! injection), times out, mirrors to v3 and shifts traffic 50/50 between v1 and v3; each
//! outcome is observed in the answers and in Istio's metrics with Envoy's flags.

use crate::{
    support::*,
    waypoint::{apps_with, curl, metrics, start_bound, waypoint_requests, xds_edit},
};
use amesh_testbed::{mesh::PodSpec, probe::serve_with};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

const REVIEWS: &str = "10.96.0.21:9080";

fn specs() -> Vec<PodSpec> {
    let reviews = |name, version| PodSpec {
        labels: match version {
            "v1" => &[("svc", "reviews"), ("version", "v1")],
            "v2" => &[("svc", "reviews"), ("version", "v2")],
            "v3" => &[("svc", "reviews"), ("version", "v3")],
            _ => &[("svc", "reviews"), ("version", "slow")],
        },
        ..pod(name, "shop", "node2")
    };
    vec![
        pod("a", "shop", "node1"),
        reviews("r1", "v1"),
        reviews("r2", "v2"),
        reviews("r3", "v3"),
        reviews("r4", "slow"),
        crate::waypoint::WP,
    ]
}

const OBJECTS: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.21, selector: {svc: reviews}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
  - {name: slow, labels: {version: slow}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /delayed}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.5s
    route: [{destination: {host: reviews, subset: slow}}]
  - match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 100}
  - match: [{uri: {prefix: /shift}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
  - match: [{uri: {prefix: /service/}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 203, body: {string: "answered by the waypoint"}}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 10m
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /labelled}, sourceLabels: {app: nobody}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /labelled}, sourceLabels: {app: a}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;

fn served_by(body: &str) -> String {
    body.split_whitespace()
        .find_map(|f| f.strip_prefix("served-by="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn istios_traffic_tasks_work_through_the_waypoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + OBJECTS);
    let waypoint = start_bound(&mut mesh);
    let _apps = apps_with(
        &mesh,
        &[
            ("r1", &[]),
            ("r2", &[]),
            ("r3", &[]),
            ("r4", &["--delay-ms", "3000"]),
        ],
    );
    let url = |path: &str| format!("http://{REVIEWS}{path}");
    let log = || waypoint.log();
    let curl_as = |user: &str, path: &str| {
        let out = mesh
            .pod("a")
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-H",
                &format!("end-user: {user}"),
                &url(path),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // 1. Request routing: jason to v2, everyone else to v1.
    for _ in 0..5 {
        assert_eq!(
            served_by(&curl_as("jason", "/reviews")),
            "r2-app",
            "{}",
            log()
        );
        assert_eq!(
            served_by(&curl_as("alice", "/reviews")),
            "r1-app",
            "{}",
            log()
        );
    }
    // 2. Fault injection: an abort, and a delay.
    let (status, body) = curl(&mesh, "a", &url("/fault"));
    assert_eq!(
        (status, body.trim()),
        (500, "fault filter abort"),
        "{}",
        log()
    );
    let (status, body) = curl(&mesh, "a", &url("/delayed"));
    assert_eq!((status, served_by(&body)), (200, "r1-app".into()), "{body}");
    // 5. Request timeouts: the slow subset answers after 3 s, the route allows 0.5 s.
    let (status, body) = curl(&mesh, "a", &url("/slow"));
    assert_eq!(
        (status, body.trim()),
        (504, "upstream request timeout"),
        "{}",
        log()
    );
    // 7. Mirroring: v1 answers; v3 receives the copy.
    let (status, body) = curl(&mesh, "a", &url("/mirror"));
    assert_eq!((status, served_by(&body)), (200, "r1-app".into()), "{body}");
    let r3 = mesh.v4("r3", APP_PORT);
    amesh_testbed::eventually(
        "the mirrored copy reached v3",
        Duration::from_secs(5),
        || {
            log()
                .lines()
                .any(|l| l.contains("mirrored") && l.contains(&r3.to_string()))
                .then_some(())
                .ok_or_else(log)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // 3. Traffic shifting: 50/50 between v1 and v3, never v2 (statistical bounds).
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..100 {
        *seen
            .entry(served_by(&curl_as("alice", "/shift")))
            .or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["r1-app", "r3-app"],
        "{seen:?}"
    );
    assert!(
        seen.values().all(|n| (25..=75).contains(n)),
        "50/50 over 100 requests: {seen:?}"
    );

    // uriRegexRewrite: the app sees the rewritten path; directResponse: the waypoint answers.
    let rewritten = curl_as("x", "/service/ratings/v1/stars");
    assert!(
        rewritten.contains("line=GET /v1/stars/instance/ratings HTTP/1.1"),
        "{rewritten}\n{}",
        log()
    );
    let (status, body) = curl(&mesh, "a", &url("/health"));
    assert_eq!((status, body.trim()), (203, "answered by the waypoint"));
    // CORS: an allowed origin's preflight is answered by the waypoint with the policy's
    // headers; its actual request gets the allow-origin and expose headers; another
    // origin's preflight goes on upstream (Istio's default), with none of them.
    let with = |args: &[&str]| {
        let out = mesh
            .pod("a")
            .command("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args)
            .arg(url("/cors"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let pre = with(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://shop.example",
        "-H",
        "access-control-request-method: POST",
    ]);
    assert!(pre.starts_with("http/1.1 200"), "{pre}");
    for h in [
        "access-control-allow-origin: https://shop.example",
        "access-control-allow-methods: get,post",
        "access-control-allow-headers: x-token",
        "access-control-max-age: 600",
    ] {
        assert!(pre.contains(h), "{h}: {pre}");
    }
    assert!(
        !pre.contains("served-by="),
        "answered by the waypoint: {pre}"
    );
    let actual = with(&["-H", "origin: https://shop.example"]);
    assert!(actual.contains("served-by=r1-app"), "{actual}");
    assert!(
        actual.contains("access-control-allow-origin: https://shop.example"),
        "{actual}"
    );
    assert!(
        actual.contains("access-control-expose-headers: x-trace"),
        "{actual}"
    );
    let other = with(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://evil.example",
        "-H",
        "access-control-request-method: POST",
    ]);
    assert!(other.contains("served-by=r1-app"), "forwarded: {other}");
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    // sourceLabels: the rule for `app: a` (this client), not the one for nobody.
    assert_eq!(served_by(&curl_as("x", "/labelled")), "r3-app", "{}", log());
    // Envoy's flags in Istio's metrics.
    let m = metrics(&waypoint);
    for (code, flag) in [("500", "FI"), ("200", "DI"), ("504", "UT")] {
        assert!(
            waypoint_requests(
                &m,
                &[
                    &format!("response_code=\"{code}\""),
                    &format!("response_flags=\"{flag}\"")
                ]
            ) >= 1.0,
            "{code} {flag}: {m}"
        );
    }
}

/// The 5xx count in h2load's "status codes: N 2xx, N 3xx, N 4xx, N 5xx" line, and the 2xx.
fn h2load_codes(report: &str) -> (u32, u32) {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("status codes:"))
        .unwrap_or_default();
    let count = |class: &str| {
        line.split(',')
            .find(|p| p.trim().ends_with(class))
            .and_then(|p| {
                p.trim()
                    .trim_start_matches("status codes:")
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (count("2xx"), count("5xx"))
}

#[test]
fn circuit_breaking_answers_overflow_with_uo() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: shop}
spec: {clusterIP: 10.96.0.22, selector: {version: slow}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow, namespace: shop}
spec:
  host: slow
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"#;
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let waypoint = start_bound(&mut mesh);
    let any = SocketAddr::from(([0u16; 8], APP_PORT));
    let _app = serve_with(
        &mesh.probe,
        mesh.pod("r4"),
        "r4-app",
        &["--delay-ms", "300"],
        &[any],
    )
    .expect("app");
    // Four clients at once against a limit of two in flight (one connection, one waiting).
    let out = mesh
        .pod("a")
        .command("h2load")
        .args(["--h1", "-n", "24", "-c", "4", "http://10.96.0.22:9080/"])
        .output()
        .expect("h2load");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let (ok, overflow) = h2load_codes(&report);
    assert!(
        ok > 0 && overflow > 0,
        "some through, some refused: {report}\n{}",
        waypoint.log()
    );
    // Every overflow h2load saw was counted with UO (on a loaded host h2load may also lose
    // a connection; its requests are then in neither count), and no other 503 was made.
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"503\"", "response_flags=\"UO\""])
            >= f64::from(overflow),
        "every overflow counted with UO: {m}\n{report}"
    );
    assert_eq!(
        waypoint_requests(&m, &["response_code=\"503\"", "response_flags=\"-\""]),
        0.0,
        "no 503 but the breaker's: {m}"
    );
    // Every field of Istio's task is enforced: nothing of it is reported as unsupported.
    let cp = mesh
        .control_plane
        .as_ref()
        .map(|c| c.log())
        .unwrap_or_default();
    assert!(!cp.contains("not supported yet"), "{cp}");
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint() {
    amesh_testbed::require_root();
    let flaky = |name| PodSpec {
        labels: &[("svc", "flaky")],
        ..pod(name, "shop", "node2")
    };
    let specs = vec![
        pod("a", "shop", "node1"),
        flaky("f1"),
        flaky("f2"),
        flaky("f3"),
        crate::waypoint::WP,
    ];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: shop}
spec: {clusterIP: 10.96.0.23, selector: {svc: flaky}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky, namespace: shop}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
"#;
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let waypoint = start_bound(&mut mesh);
    // f1 always answers 503; f3 has no app (its connections fail); f2 answers.
    let _apps = crate::waypoint::apps_with(&mesh, &[("f1", &["--status", "503"]), ("f2", &[])]);
    let url = "http://10.96.0.23:9080/";
    let mut answers = Vec::new();
    for _ in 0..30 {
        let (status, body) = curl(&mesh, "a", url);
        answers.push((status, served_by(&body)));
    }
    let failures = answers.iter().filter(|(s, _)| *s == 503).count();
    assert!(
        (4..=6).contains(&failures),
        "f1 and f3 each fail twice, then are ejected: {answers:?}\n{}",
        waypoint.log()
    );
    assert!(
        answers[answers.len() - 20..]
            .iter()
            .all(|(s, by)| *s == 200 && by == "f2-app"),
        "then only f2: {answers:?}"
    );
    let m = metrics(&waypoint);
    assert!(
        m.lines()
            .any(|l| l.starts_with("amesh_waypoint_outlier_ejections_total")
                && l.contains("flaky.shop.svc.cluster.local")
                && l.ends_with(" 2")),
        "two ejections counted (an error answer, a failed connection): {m}"
    );
    assert!(
        waypoint
            .log()
            .contains("endpoint ejected (outlier detection)")
    );
}

#[test]
fn tcp_traffic_shifts_by_weight_between_subsets() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {clusterIP: 10.96.0.24, selector: {svc: reviews}, ports: [{name: tcp-echo, port: 9000, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo]
  tcp:
  - route:
    - {destination: {host: echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: echo, port: {number: 9000}, subset: v2}, weight: 20}
"#;
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let waypoint = start_bound(&mut mesh);
    let _apps =
        crate::waypoint::apps_with(&mesh, &[("r1", &[]), ("r2", &[]), ("r3", &[]), ("r4", &[])]);
    let target: SocketAddr = "10.96.0.24:9000".parse().unwrap();
    let mut seen = BTreeMap::<String, u32>::new();
    for result in mesh.connect("a", &[], &vec![target; 100]) {
        let c = result
            .outcome
            .unwrap_or_else(|e| panic!("{e}\n{}", waypoint.log()));
        *seen.entry(served_by(&c.reply)).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["r1-app", "r2-app"],
        "only the two subsets: {seen:?}"
    );
    let v1 = seen["r1-app"];
    assert!(
        (65..=95).contains(&v1),
        "80/20 over 100 connections: {seen:?}"
    );
    let m = metrics(&waypoint);
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("request_protocol=\"tcp\"")),
        "{m}"
    );
}

#[test]
fn consistent_hashing_keeps_a_user_on_one_endpoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: shop}
spec: {clusterIP: 10.96.0.25, selector: {svc: reviews}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: shop}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
"#;
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let waypoint = start_bound(&mut mesh);
    let _apps =
        crate::waypoint::apps_with(&mesh, &[("r1", &[]), ("r2", &[]), ("r3", &[]), ("r4", &[])]);
    let ask = |user: &str| {
        let out = mesh
            .pod("a")
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-H",
                &format!("x-user: {user}"),
                "http://10.96.0.25:9080/",
            ])
            .output()
            .expect("curl");
        served_by(&String::from_utf8_lossy(&out.stdout))
    };
    let first = ask("alice");
    assert!(first.ends_with("-app"), "{first}\n{}", waypoint.log());
    for _ in 0..15 {
        assert_eq!(ask("alice"), first, "one user, one endpoint");
    }
    let spread: std::collections::BTreeSet<String> =
        (0..12).map(|i| ask(&format!("user-{i}"))).collect();
    assert!(
        spread.len() >= 2,
        "users spread over the endpoints: {spread:?}"
    );
}

#[test]
fn a_subsets_own_traffic_policy_applies_to_its_requests_only() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    // Requests to subset `slow` (r4) may have two in flight; those to `v1` (r1) have no
    // limit. The Service-wide policy sets none.
    let objects = r#"---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {clusterIP: 10.96.0.23, selector: {svc: reviews}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: slow
    labels: {version: slow}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {x-subset: {exact: v1}}}]
    route: [{destination: {host: ratings, subset: v1}}]
  - route: [{destination: {host: ratings, subset: slow}}]
"#;
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + objects);
    let waypoint = start_bound(&mut mesh);
    let _apps = apps_with(
        &mesh,
        &[
            ("r1", &["--delay-ms", "300"]),
            ("r4", &["--delay-ms", "300"]),
        ],
    );
    let load = |extra: &[&str]| {
        let out = mesh
            .pod("a")
            .command("h2load")
            .args(["--h1", "-n", "16", "-c", "4"])
            .args(extra)
            .arg("http://10.96.0.23:9080/")
            .output()
            .expect("h2load");
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        let codes = h2load_codes(&report);
        (codes, report)
    };
    // Subset v1: all through, four at a time.
    let ((ok, overflow), report) = load(&["-H", "x-subset: v1"]);
    assert_eq!(
        (ok, overflow),
        (16, 0),
        "no limit for v1: {report}\n{}",
        waypoint.log()
    );
    // Subset slow: its own limit holds.
    let ((ok, overflow), report) = load(&[]);
    assert!(
        ok > 0 && overflow > 0,
        "some through, some refused: {report}\n{}",
        waypoint.log()
    );
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"503\"", "response_flags=\"UO\""])
            >= f64::from(overflow),
        "overflows counted with UO: {m}"
    );
}
