//! AuthorizationPolicy at the waypoint, with real curl requests from an enrolled pod: a DENY
//! on a path, an ALLOW on methods and on a header, an AUDIT that only counts, and a policy
//! from the source's principal; each denial is 403 `RBAC: access denied`, counted in Istio's
//! metrics and logged with the deciding policy.

use crate::{
    support::*,
    waypoint::{curl, metrics, start_waypoint, waypoint_requests, xds_edit},
};
use amesh_testbed::mesh::{PodSpec, VIP};

fn specs() -> Vec<PodSpec> {
    vec![
        pod("a", "shop", "node1"),
        pod("z", "shop", "node1"),
        PodSpec {
            in_service: true,
            ..pod("b", "shop", "node2")
        },
        crate::waypoint::WP,
    ]
}

const POLICIES: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/a"]}}]
    to: [{operation: {methods: [GET]}}]
  - to: [{operation: {methods: [POST], paths: ["/orders/{*}"]}}]
    when: [{key: "request.headers[x-token]", values: [letmein]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited"]}}]}]
"#;

fn curl_with(mesh: &Mesh, from: &str, args: &[&str], url: &str) -> (u16, String) {
    let out = mesh
        .pod(from)
        .command("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn authorization_policies_are_enforced_per_request_at_the_waypoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + POLICIES);
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start(&[]).expect("start the nodes");
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node).expect("ztunnel ready");
    }
    let waypoint = start_waypoint(&mesh);
    let _apps = mesh.apps(&["b"]);
    let url = |path: &str| format!("http://{VIP}{path}");
    let log = || waypoint.log();

    // ALLOW: a's GETs.
    let (status, body) = curl(&mesh, "a", &url("/items"));
    assert_eq!(status, 200, "{body}\n{}", log());
    // DENY wins over ALLOW.
    let (status, body) = curl(&mesh, "a", &url("/admin/users"));
    assert_eq!(
        (status, body.trim()),
        (403, "RBAC: access denied"),
        "{}",
        log()
    );
    // No ALLOW rule matches: z is not a reader, PUT is no one's, POST needs the header and
    // an /orders/<id> path.
    let denied = [
        ("z", vec![], "/items"),
        ("a", vec!["-X", "PUT"], "/items"),
        ("a", vec!["-X", "POST"], "/orders/7"),
        (
            "a",
            vec!["-X", "POST", "-H", "x-token: letmein"],
            "/orders/7/lines",
        ),
    ];
    for (from, args, path) in &denied {
        let (status, body) = curl_with(&mesh, from, args, &url(path));
        assert_eq!(
            (status, body.trim()),
            (403, "RBAC: access denied"),
            "{from} {args:?} {path}\n{}",
            log()
        );
    }
    let (status, body) = curl_with(
        &mesh,
        "z",
        &["-X", "POST", "-H", "x-token: letmein"],
        &url("/orders/7"),
    );
    assert_eq!(
        status,
        200,
        "the header rule allows anyone: {body}\n{}",
        log()
    );
    // AUDIT: allowed, and counted.
    let (status, _) = curl(&mesh, "a", &url("/audited"));
    assert_eq!(status, 200);

    let m = metrics(&waypoint);
    assert_eq!(
        waypoint_requests(&m, &["response_code=\"403\"", "reporter=\"waypoint\""]),
        5.0,
        "every denial counted: {m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("amesh_waypoint_policy_audit_total{policy=\"shop/watch\"} 1")),
        "{m}"
    );
    assert!(
        log()
            .lines()
            .any(|l| l.contains("request denied by policy") && l.contains("shop/no-admin")),
        "the deciding policy is logged:\n{}",
        log()
    );
    assert!(
        log().lines().any(
            |l| l.contains("request denied by policy") && l.contains("no ALLOW policy matched")
        ),
        "{}",
        log()
    );
}
