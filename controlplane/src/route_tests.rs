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

#[test]
fn grpc_routes_become_path_matches_as_istio_translates_them() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - method: {service: pkg.Greeter, method: Hello}
      headers: [{name: X-Version, value: v2}]
    - method: {service: pkg.Greeter}
    - method: {method: Hello}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "Get.*"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed, value: grpc}]}
    backendRefs: [{name: web-v2, port: 80}]
"#,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let rule = &r.routes["GRPCRoute/shop/greeter/0"];
    assert_eq!(rule.kind, pb::RouteKind::GrpcRoute as i32);
    assert_eq!(rule.route, "shop/greeter");
    let paths: Vec<(i32, &str)> = rule
        .matches
        .iter()
        .map(|m| {
            let p = m.path.as_ref().unwrap();
            (p.kind, p.value.as_str())
        })
        .collect();
    use pb::path_match::Kind;
    assert_eq!(
        paths,
        [
            (Kind::Exact as i32, "/pkg.Greeter/Hello"),
            (Kind::Prefix as i32, "/pkg.Greeter"),
            (Kind::Regex as i32, "/[^/]+/Hello"),
            (Kind::Regex as i32, "/(?:pkg\\..*)/(?:Get.*)"),
        ]
    );
    assert_eq!(rule.matches[0].headers[0].name, "x-version");
    assert_eq!(rule.backends[0].service, V2);
    assert_eq!(rule.filters.len(), 1);
}

#[test]
fn bad_grpc_and_tcp_routes_are_reported_and_good_ones_kept() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: empty-method, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{method: {type: Exact}}], backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bad-regex, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{method: {type: RegularExpression, service: "(("}}], backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v2, port: 80, weight: 3}, {name: web, port: 80, weight: 1}]}]
"#,
    );
    let reasons: Vec<(&str, &str, &str)> = r
        .errors
        .iter()
        .map(|e| (e.kind, e.name.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|(k, n, why)| *k == "GRPCRoute"
            && *n == "empty-method"
            && why.contains("spec.rules[0].matches[0].method")
            && why.contains("needs a service or a method")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(k, n, why)| *k == "GRPCRoute"
            && *n == "bad-regex"
            && why.contains("not a regular expression")),
        "{reasons:?}"
    );
    let tcp = &r.routes["TCPRoute/shop/db/0"];
    assert_eq!(tcp.kind, pb::RouteKind::TcpRoute as i32);
    assert!(tcp.matches.is_empty());
    assert_eq!(
        tcp.backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect::<Vec<_>>(),
        [(V2, 3), (WEB, 1)]
    );
    assert_eq!(tcp.parents[0].port, 80);
}

#[test]
fn service_ports_carry_their_declared_protocol() {
    use amesh_proto::workload as wl;
    let r = translated(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  selector: {app: api}
  ports:
  - {name: grpc-api, port: 9090}
  - {name: web, port: 8080, appProtocol: kubernetes.io/h2c}
  - {name: tcp-db, port: 5432}
  - {port: 7000}
"#,
    );
    let svc = r
        .addresses
        .values()
        .find_map(|a| match &a.r#type {
            Some(wl::address::Type::Service(s)) if s.name == "api" => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let declared: Vec<(u32, i32)> = svc
        .ports
        .iter()
        .map(|p| (p.service_port, p.app_protocol))
        .collect();
    assert_eq!(
        declared,
        [
            (9090, wl::AppProtocol::Grpc as i32),
            (8080, wl::AppProtocol::Http2 as i32),
            (5432, wl::AppProtocol::Tcp as i32),
            (7000, wl::AppProtocol::Unknown as i32),
        ]
    );
}

#[test]
fn a_waypoint_is_sent_only_the_routes_of_services_bound_to_it() {
    use crate::catalog::Catalog;
    use amesh_proto::HTTP_ROUTE_TYPE_URL as ROUTES;
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp2, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp2-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp2}}
spec: {nodeName: n1, serviceAccountName: wp2, containers: [{name: w, image: w}]}
status: {phase: Running, conditions: [{type: Ready, status: "True"}], podIPs: [{ip: 10.200.0.10}]}
---
apiVersion: v1
kind: Service
metadata: {name: wp2, namespace: shop}
spec: {clusterIP: 10.96.0.8, selector: {gateway.networking.k8s.io/gateway-name: wp2}, ports: [{port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop, labels: {istio.io/use-waypoint: wp2}}
spec: {clusterIP: 10.96.0.12, selector: {app: other}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: other}]
  rules: [{backendRefs: [{name: other, port: 80}]}]
"#,
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let c = Catalog::from_resources(&r);
    let wp = Some("shop/wp.shop.svc.cluster.local");
    let wp2 = Some("shop/wp2.shop.svc.cluster.local");
    assert!(c.in_scope(ROUTES, "shop/web/0", wp));
    assert!(!c.in_scope(ROUTES, "shop/web/0", wp2));
    assert!(c.in_scope(ROUTES, "shop/other/0", wp2));
    assert!(!c.in_scope(ROUTES, "shop/other/0", wp));
    assert!(
        c.in_scope(ROUTES, "shop/web/0", None),
        "a client that is not a waypoint is not scoped"
    );
    // Addresses too: each waypoint gets what is bound to it and what that sends to.
    use amesh_proto::ADDRESS_TYPE_URL as ADDRESSES;
    assert!(c.in_scope(ADDRESSES, "shop/web.shop.svc.cluster.local", wp));
    assert!(
        !c.in_scope(ADDRESSES, "shop/web.shop.svc.cluster.local", wp2),
        "another waypoint's Service"
    );
    assert!(c.in_scope(ADDRESSES, "shop/other.shop.svc.cluster.local", wp2));
    assert!(
        c.in_scope(ADDRESSES, "shop/wp2.shop.svc.cluster.local", wp2),
        "its own Service"
    );
    assert!(
        c.in_scope(ADDRESSES, "Kubernetes//v1/Pod/shop/wp2-0", wp2),
        "its own pods"
    );
    assert!(
        c.in_scope(ADDRESSES, "shop/web.shop.svc.cluster.local", None),
        "ztunnels get everything"
    );
}

#[test]
fn a_waypoint_policy_that_cannot_be_enforced_fails_closed_for_its_targets() {
    let r = translated(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: opa, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: not-configured}
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{when: [{key: experimental.envoy.filters.x, values: ["1"]}]}]
"#,
    );
    let policy = |name: &str| -> amesh_policy::Authorization {
        let p = &r.waypoint_policies[&format!("AuthorizationPolicy/shop/{name}")];
        assert_eq!(p.services, [WEB]);
        serde_json::from_str(&p.spec_json).unwrap()
    };
    let opa = policy("opa");
    assert_eq!(opa.action, amesh_policy::Action::Deny);
    assert_eq!(
        opa.rules,
        [amesh_policy::Rule::default()],
        "a rule that matches everything"
    );
    let readers = policy("readers");
    assert_eq!(readers.action, amesh_policy::Action::Allow);
    assert!(readers.rules.is_empty(), "allows nothing");
    let reasons: Vec<&str> = r.errors.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|e| e.contains("not in the mesh configuration")
                && e.contains("meanwhile it denies every request")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|e| e.contains("Envoy filter metadata")
                && e.contains("meanwhile it allows nothing")),
        "{reasons:?}"
    );
}

#[test]
fn a_route_for_an_ingress_gateway_is_another_controllers() {
    let r = translated(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: public, namespace: shop}
spec:
  parentRefs: [{name: ingress}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#,
    );
    assert!(r.errors.is_empty(), "not reported: {:?}", r.errors);
    assert!(r.routes.is_empty(), "not translated");
    assert!(r.route_status.is_empty(), "no status written");
}

#[test]
fn virtual_services_become_ordered_rules_and_what_they_cannot_do_is_reported() {
    let r = translated(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web-v1, namespace: shop, labels: {app: web, version: v1}}
spec: {nodeName: n1, containers: [{name: w, image: w}]}
status: {phase: Running, conditions: [{type: Ready, status: "True"}], podIPs: [{ip: 10.200.0.20}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec: {host: web, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web, web-v2.shop.svc.cluster.local, nowhere]
  http:
  - match: [{headers: {end-user: {prefix: ja}}, withoutHeaders: {x-test: {exact: "1"}}, ignoreUriCase: true, uri: {prefix: /API}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure"}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}
    route: [{destination: {host: web, subset: v1}}]
  - delegate: {name: elsewhere}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web, subset: v9}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: v2, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web-v2}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]
"#,
    );
    let first = &r.routes["VirtualService/shop/web/0"];
    assert_eq!(first.kind, pb::RouteKind::VirtualService as i32);
    assert_eq!(
        first
            .parents
            .iter()
            .map(|p| p.service.as_str())
            .collect::<Vec<_>>(),
        [WEB],
        "web-v2 keeps its HTTPRoute"
    );
    let m = &first.matches[0];
    assert!(m.ignore_case && m.headers[0].prefix && m.not_headers[0].name == "x-test");
    assert_eq!(
        first.backends[0].endpoints,
        ["Kubernetes//v1/Pod/shop/web-v1"]
    );
    assert_eq!(first.backends[0].weight, 100);
    let retry = first.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes.as_slice()),
        (3, &[502, 503, 504][..])
    );
    assert_eq!(first.backend_timeout_ms, 2000);
    let fault = first.fault.as_ref().unwrap();
    assert_eq!(
        (fault.abort_grpc_status, fault.abort_percent),
        (15, 10.0),
        "UNAVAILABLE is 14, sent +1"
    );
    // The delegating route stays in place and answers 500: its requests must not fall
    // through to the next route.
    let delegating = &r.routes["VirtualService/shop/web/1"];
    assert!(delegating.matches.is_empty(), "{delegating:?}");
    assert!(
        delegating.backends[0].unresolved.contains("delegate"),
        "{delegating:?}"
    );
    assert!(
        r.routes["VirtualService/shop/web/2"].backends[0]
            .unresolved
            .contains("no DestinationRule defines subset v9")
    );
    let reasons: Vec<&str> = r.errors.iter().map(|e| e.reason.as_str()).collect();
    for want in [
        "spec.http[1].delegate: not supported yet",
        "nowhere is not a Service",
        "also has HTTPRoutes, which take precedence",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
}

#[test]
fn destination_rule_traffic_policies_become_waypoint_policies_or_reports() {
    let r = translated(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 3, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 2, idleTimeout: 1s, maxRequestsPerConnection: 5, maxRetries: 2, h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutive5xxErrors: 4, baseEjectionTime: 1m, maxEjectionPercent: 50}
    loadBalancer: {consistentHash: {httpHeaderName: X-User}}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 8080}
      connectionPool: {tcp: {maxConnections: 1}}
      loadBalancer: {simple: RANDOM}
    - connectionPool: {tcp: {maxConnections: 9}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings: [{port: {number: 8080}, connectionPool: {tcp: {maxConnections: 4}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: foreign, namespace: other}
spec: {host: web.shop.svc.cluster.local, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}}
"#,
    );
    let p = &r.waypoint_policies["DestinationRule/shop/web"];
    assert_eq!(p.services, [WEB]);
    let t: amesh_policy::traffic::TrafficPolicy = serde_json::from_str(&p.spec_json).unwrap();
    assert_eq!(
        (
            t.connection_pool.max_connections,
            t.connection_pool.http1_max_pending_requests,
            t.connection_pool.connect_timeout_ms
        ),
        (3, 2, 250)
    );
    assert_eq!(
        (
            t.connection_pool.idle_timeout_ms,
            t.connection_pool.max_requests_per_connection,
            t.connection_pool.max_retries
        ),
        (1000, 5, 2)
    );
    // Port 8080's own pool and balancer; the rest Service-wide.
    let at = t.at_port(8080);
    assert_eq!(at.connection_pool.max_connections, 1);
    assert_eq!(
        at.connection_pool.max_requests_per_connection, 0,
        "replaced whole"
    );
    assert_eq!(
        at.load_balancer,
        Some(amesh_policy::traffic::LoadBalancer::Random)
    );
    assert_eq!(at.outlier_detection.unwrap().consecutive_5xx, 4, "kept");
    assert_eq!(
        t.ports.len(),
        1,
        "a setting without a port is reported, not applied"
    );
    // Subset v2's own policy: its balancer over the Service's, its port's pool over the
    // Service port's.
    let v2 = t.at(8080, Some("v2"));
    assert_eq!(
        v2.load_balancer,
        Some(amesh_policy::traffic::LoadBalancer::RoundRobin)
    );
    assert_eq!(v2.connection_pool.max_connections, 4);
    assert_eq!(
        v2.outlier_detection.unwrap().consecutive_5xx,
        4,
        "Service-wide, kept"
    );
    assert_eq!(t.at(80, Some("v2")).connection_pool.max_connections, 3);
    let od = t.outlier_detection.unwrap();
    assert_eq!(
        (
            od.consecutive_5xx,
            od.base_ejection_ms,
            od.max_ejection_percent
        ),
        (4, 60_000, 50)
    );
    assert_eq!(
        t.load_balancer,
        Some(amesh_policy::traffic::LoadBalancer::ConsistentHash(
            amesh_policy::traffic::HashKey::Header("x-user".into())
        ))
    );
    assert!(
        !r.waypoint_policies
            .contains_key("DestinationRule/other/foreign"),
        "another namespace's"
    );
    let reasons: Vec<&str> = r.errors.iter().map(|e| e.reason.as_str()).collect();
    for want in [
        "connectionPool.http.h2UpgradePolicy: not supported yet",
        "portLevelSettings[1].port.number: a port is required",
        "trafficPolicy.tls: not supported yet",
        "applies from its Service's namespace",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
}

#[test]
fn regex_rewrites_and_direct_responses_translate_as_istio_validates_them() {
    let r = translated(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /service}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
    route: [{destination: {host: web}}]
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200, body: {string: "ok\n"}}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {bytes: "c2hvcnQgYW5kIHN0b3V0"}}
  - directResponse: {status: 99}
  - rewrite: {uri: /x, uriRegexRewrite: {match: "a", rewrite: "b"}}
    route: [{destination: {host: web}}]
  - rewrite: {uriRegexRewrite: {match: "(", rewrite: "b"}}
    route: [{destination: {host: web}}]
  - directResponse: {status: 200}
    route: [{destination: {host: web}}]
"#,
    );
    let rewrite = |i: usize| {
        r.routes[&format!("VirtualService/shop/web/{i}")]
            .filters
            .iter()
            .find_map(|f| match &f.kind {
                Some(pb::filter::Kind::Rewrite(w)) => w.path.clone(),
                _ => None,
            })
    };
    let p = rewrite(0).expect("a path rewrite");
    assert_eq!(p.kind, pb::path_modifier::Kind::Regex as i32);
    assert_eq!(p.pattern, "^/service/([^/]+)(/.*)$");
    assert_eq!(
        p.value, "${2}/instance/${1}",
        "RE2's \\N as the regex crate's ${{N}}"
    );
    let direct = |i: usize| {
        r.routes[&format!("VirtualService/shop/web/{i}")]
            .filters
            .iter()
            .find_map(|f| match &f.kind {
                Some(pb::filter::Kind::DirectResponse(d)) => Some(d.clone()),
                _ => None,
            })
    };
    let health = direct(1).expect("a direct response");
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(direct(2).unwrap().body, b"short and stout");
    let reasons: Vec<&str> = r.errors.iter().map(|e| e.reason.as_str()).collect();
    for want in [
        "spec.http[3].directResponse.status: a status from 200 to 599 is required",
        "spec.http[4].rewrite: uri and uriRegexRewrite cannot both be set",
        "spec.http[5].rewrite.uriRegexRewrite.match",
        "spec.http[6].directResponse: cannot be set with route or redirect",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
}

#[test]
fn source_labels_match_the_addresses_of_the_labelled_clients() {
    let r = translated(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tester, namespace: other, labels: {app: tester, role: qa}}
spec: {nodeName: n1, containers: [{name: t, image: t}]}
status: {phase: Running, podIPs: [{ip: 10.200.0.31}, {ip: "fd00::31"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: user, namespace: other, labels: {app: user}}
spec: {nodeName: n1, containers: [{name: u, image: u}]}
status: {phase: Running, podIPs: [{ip: 10.200.0.32}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{sourceLabels: {app: tester}}]
    route: [{destination: {host: web}}]
  - match: [{sourceLabels: {app: nobody}}]
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
"#,
    );
    let m = &r.routes["VirtualService/shop/web/0"].matches[0];
    assert!(m.source_labels);
    assert_eq!(
        m.source_ips,
        [
            vec![10, 200, 0, 31],
            "fd00::31"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec()
        ]
    );
    let none = &r.routes["VirtualService/shop/web/1"].matches[0];
    assert!(
        none.source_labels && none.source_ips.is_empty(),
        "matches no one"
    );
    assert!(
        !r.routes["VirtualService/shop/web/2"]
            .matches
            .iter()
            .any(|m| m.source_labels)
    );
    assert!(
        !r.errors.iter().any(|e| e.reason.contains("sourceLabels")),
        "{:?}",
        r.errors
    );
}

#[test]
fn cors_policies_translate_and_bad_ones_are_named() {
    let r = translated(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example"}, {regex: "https://.*\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    route: [{destination: {host: web}}]
  - corsPolicy: {allowOrigins: [{}]}
    route: [{destination: {host: web}}]
  - corsPolicy: {unmatchedPreflights: SOMETIMES}
    route: [{destination: {host: web}}]
"#,
    );
    let c = r.routes["VirtualService/shop/web/0"]
        .cors
        .clone()
        .expect("cors");
    assert_eq!(c.allow_origins.len(), 2);
    assert!(c.allow_origins[1].regex);
    assert_eq!(c.allow_methods, ["GET", "POST"]);
    assert_eq!(
        (c.max_age_seconds, c.allow_credentials),
        (Some(86400), true)
    );
    assert!(c.ignore_unmatched_preflights);
    let reasons: Vec<&str> = r.errors.iter().map(|e| e.reason.as_str()).collect();
    for want in [
        "spec.http[1].corsPolicy.allowOrigins[0]: exactly one of exact, prefix, regex",
        "spec.http[2].corsPolicy.unmatchedPreflights",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
}
