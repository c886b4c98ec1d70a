//! HTTPRoute → amesh route rules: what is kept, what is marked, what is refused.
#![allow(clippy::unwrap_used, reason = "tests")]

use crate::translate::{self, Mesh, Resources};
use amesh_kube::source;
use amesh_proto::route as pb;
use std::path::Path;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: web2}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: n1, serviceAccountName: wp, containers: [{name: w, image: w}]}
status: {phase: Running, conditions: [{type: Ready, status: "True"}], podIPs: [{ip: 10.200.0.9}]}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: shop}
spec: {clusterIP: 10.96.0.9, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{port: 15008}]}
---
"#;

fn translated(routes: &str) -> Resources {
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    let text = format!("{BASE}{routes}");
    source::read_documents(Path::new("routes.yaml"), &text, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    translate::translate(&snap, &Mesh::default())
}

const WEB: &str = "shop/web.shop.svc.cluster.local";
const V2: &str = "shop/web-v2.shop.svc.cluster.local";

#[test]
fn a_route_on_a_service_becomes_one_resource_per_rule() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /a}, headers: [{name: X-Version, value: v2}], method: POST}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}
    backendRefs: [{name: web-v2, port: 80, weight: 9}, {name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"#,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.routes.keys().collect::<Vec<_>>(),
        ["shop/web/0", "shop/web/1"],
        "one resource per rule, named after its route"
    );
    let first = &r.routes["shop/web/0"];
    assert_eq!(first.route, "shop/web");
    assert_eq!(first.created, 1_767_323_045);
    assert_eq!(
        first.parents,
        [pb::Parent {
            service: WEB.into(),
            port: 80
        }]
    );
    let m = &first.matches[0];
    assert_eq!(
        m.path.as_ref().unwrap().kind,
        pb::path_match::Kind::Exact as i32
    );
    assert_eq!(
        m.headers[0].name, "x-version",
        "header names are case-insensitive"
    );
    assert_eq!(m.method, "POST");
    assert_eq!(
        (first.request_timeout_ms, first.backend_timeout_ms),
        (2000, 500)
    );
    let retry = first.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes.as_slice(), retry.backoff_ms),
        (3, &[502, 503][..], 100)
    );
    let backends: Vec<(&str, u32, u32)> = first
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(
        backends,
        [(V2, 80, 9), (WEB, 80, 1)],
        "weight defaults to 1"
    );
}

#[test]
fn a_route_on_the_waypoint_gateway_covers_every_service_bound_to_it() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: shop}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#,
    );
    let mut parents: Vec<&str> = r.routes["shop/all/0"]
        .parents
        .iter()
        .map(|p| p.service.as_str())
        .collect();
    parents.sort();
    assert_eq!(
        parents,
        [V2, WEB],
        "the waypoint's own Service is not bound to it"
    );
}

#[test]
fn unresolved_backends_are_kept_marked_and_bad_routes_are_reported() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: refs, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules:
  - backendRefs:
    - {name: ghost, port: 80}
    - {name: web}
    - {name: web, namespace: other, port: 80}
    - {name: web, port: 81}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "("}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-parent, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: nothing}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{kind: Service, group: "", name: web, namespace: shop}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-time, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{timeouts: {request: soon}}]
"#,
    );
    let reasons: Vec<String> = r.routes["shop/refs/0"]
        .backends
        .iter()
        .map(|b| b.unresolved.clone())
        .collect();
    assert!(
        reasons[0].contains("Service shop/ghost does not exist"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("needs a port"), "{reasons:?}");
    assert!(reasons[2].contains("ReferenceGrant"), "{reasons:?}");
    assert!(reasons[3].contains("has no port 81"), "{reasons:?}");
    let report = |name: &str| {
        r.errors
            .iter()
            .find(|e| e.kind == "HTTPRoute" && e.name == name)
            .map(|e| e.reason.clone())
            .unwrap_or_else(|| panic!("{name} not reported: {:?}", r.errors))
    };
    assert!(
        report("bad-regex")
            .starts_with("spec.rules[0].matches[0].path.value: not a regular expression")
    );
    assert!(report("no-parent").contains("Service shop/nothing does not exist"));
    assert!(report("consumer").contains("consumer route"));
    assert!(report("bad-time").starts_with("spec.rules[0].timeouts.request"));
    for refused in ["bad-regex", "no-parent", "consumer", "bad-time"] {
        assert!(
            !r.routes.keys().any(|k| k.contains(refused)),
            "{refused} sends nothing"
        );
    }
}
