//! Gateway API routing at the waypoint, observed with real curl requests from an enrolled
//! pod: an HTTPRoute attached to Service `web` sends requests with a header to `web-v2`,
//! splits the rest by weight, rewrites, redirects, mirrors, times out and retries, and
//! answers 500 for a backend that does not exist.

use crate::{
    support::*,
    waypoint::{apps_with, curl, metrics, start_bound, waypoint_requests, xds_edit},
};
use amesh_testbed::mesh::{PodSpec, VIP};
use std::time::Duration;

fn specs() -> Vec<PodSpec> {
    vec![
        pod("a", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        pod("c", "shop", "node2"),
        pod("d", "shop", "node2"),
        pod("e", "shop", "node2"),
        crate::waypoint::WP,
    ]
}

/// Services: `web-v2` (c), `flaky` (b and d, d answering 503), `slow` (e, 3 s late),
/// `shadow` (c); the route on `web`.
const OBJECTS: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: c}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: shop}
spec: {clusterIP: 10.96.0.12, selector: {flaky: "yes"}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: shop}
spec: {clusterIP: 10.96.0.13, selector: {app: e}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: shop}
spec: {clusterIP: 10.96.0.14, selector: {app: c}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed, value: header}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-answered-by, value: v2-rule}]}
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /here}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: slow, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {attempts: 2, codes: [503], backoff: 10ms}
    backendRefs: [{name: flaky, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /ghost}}]
    backendRefs: [{name: ghost, port: 80}]
  - backendRefs: [{name: web, port: 80, weight: 1}, {name: web-v2, port: 80, weight: 1}]
"#;

fn served_by(body: &str) -> &str {
    body.split_whitespace()
        .find_map(|f| f.strip_prefix("served-by="))
        .unwrap_or("")
}

#[test]
fn httproute_rules_are_applied_at_the_waypoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, |t| {
        crate::waypoint::bind_shop(t)
            .replace(
                "labels: {app: b}",
                "labels: {app: b, svc: web, flaky: \"yes\"}",
            )
            .replace(
                "labels: {app: b, svc: web}",
                "labels: {app: b, svc: web, flaky: \"yes\"}",
            )
            .replace("labels: {app: d}", "labels: {app: d, flaky: \"yes\"}")
            + OBJECTS
    });
    let waypoint = start_bound(&mut mesh);
    let _apps = apps_with(
        &mesh,
        &[
            ("b", &[]),
            ("c", &[]),
            ("d", &["--status", "503"]),
            ("e", &["--delay-ms", "3000"]),
        ],
    );
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || waypoint.log();

    // A header sends to web-v2, with the rule's request and response headers.
    let out = mesh
        .pod("a")
        .command("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-H",
            "x-version: v2",
            &url("/any"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("served-by=c-app"), "{text}\n{}", log());
    assert!(
        text.contains("x-routed=header"),
        "the request header was set: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("x-answered-by: v2-rule"),
        "the response header was added: {text}"
    );

    // The rest splits by weight over web (b) and web-v2 (c).
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let (status, body) = curl(&mesh, "a", &url("/split"));
        assert_eq!(status, 200, "{body}");
        *seen.entry(served_by(&body).to_string()).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both backends of the split answered: {seen:?}"
    );
    assert!(
        seen.values().all(|n| *n >= 5),
        "1:1 weights, 30 requests: {seen:?}"
    );

    // URL rewrite: the app sees the new prefix.
    let (status, body) = curl(&mesh, "a", &url("/old/page?q=1"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("line=GET /new/page?q=1 HTTP/1.1"), "{body}");

    // Redirect: 301 with the new location, no backend involved.
    let out = mesh
        .pod("a")
        .command("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            &url("/moved/x"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.trim(), format!("301 http://{VIP}/here/x"), "{}", log());

    // Timeout: the slow backend answers after 3 s; the route allows 500 ms.
    let started = std::time::Instant::now();
    let (status, body) = curl(&mesh, "a", &url("/slow"));
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cut at the route's timeout"
    );

    // Retry: flaky's endpoints alternate between a 503 (d) and a 200 (b); every request
    // ends 200 after retries.
    for _ in 0..6 {
        let (status, body) = curl(&mesh, "a", &url("/flaky"));
        assert_eq!(status, 200, "{body}\n{}", log());
        assert_eq!(served_by(&body), "b-app", "{body}");
    }
    assert!(
        log().contains("retrying"),
        "some requests were retried:\n{}",
        log()
    );

    // Mirror: the request is answered by web (b) and a copy reaches shadow (c) with -shadow.
    let (status, body) = curl(&mesh, "a", &url("/mirror"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "b-app", "{body}");
    let c = mesh.v4("c", APP_PORT);
    amesh_testbed::eventually("the mirrored copy answered", Duration::from_secs(5), || {
        log()
            .lines()
            .any(|l| l.contains("mirrored") && l.contains(&c.to_string()))
            .then_some(())
            .ok_or_else(log)
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // A backend that does not exist: 500, as the Gateway API asks.
    let (status, body) = curl(&mesh, "a", &url("/ghost"));
    assert_eq!(status, 500, "{body}");

    // The metrics saw each outcome with its flag.
    let m = metrics(&waypoint);
    assert!(
        waypoint_requests(&m, &["response_code=\"504\"", "response_flags=\"UT\""]) >= 1.0,
        "{m}"
    );
    assert!(
        waypoint_requests(&m, &["response_code=\"500\"", "response_flags=\"NC\""]) >= 1.0,
        "{m}"
    );
    assert!(
        waypoint_requests(&m, &["response_code=\"301\""]) >= 1.0,
        "{m}"
    );
    assert!(
        waypoint_requests(
            &m,
            &["destination_service=\"web-v2.shop.svc.cluster.local\""]
        ) >= 1.0,
        "routed requests are labelled with the backend service: {m}"
    );
}
