//! gRPC and TCP through the waypoint with real peers: gRPC's own client and server
//! (grpcio) call through a GRPCRoute that routes by method and metadata, over pooled
//! upstream HTTP/2; a TCPRoute sends a `tcp-` port's connections to its backend as TCP; each
//! is counted in Istio's metrics with its gRPC status or as TCP.

use crate::{
    support::*,
    waypoint::{metrics, start_bound, waypoint_requests, xds_edit},
};
use amesh_testbed::{grpc, mesh::PodSpec, probe};
use std::net::SocketAddr;

fn specs() -> Vec<PodSpec> {
    vec![
        pod("a", "shop", "node1"),
        pod("b", "shop", "node2"),
        pod("c", "shop", "node2"),
        crate::waypoint::WP,
    ]
}

const GRPC_PORT: u16 = 9090;
const GREETER: &str = "10.96.0.15";
const DB: &str = "10.96.0.17";

/// `greeter` (b) and `greeter-v2` (c) on a port named `grpc`; `db` (b) and `db-v2` (c) on a
/// port named `tcp-db`; a GRPCRoute on greeter and a TCPRoute on db.
const OBJECTS: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: shop}
spec: {clusterIP: 10.96.0.15, selector: {app: b}, ports: [{name: grpc, port: 9090, targetPort: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: greeter-v2, namespace: shop}
spec: {clusterIP: 10.96.0.16, selector: {app: c}, ports: [{name: grpc, port: 9090, targetPort: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.17, selector: {app: b}, ports: [{name: tcp-db, port: 5432, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-v2, namespace: shop}
spec: {clusterIP: 10.96.0.18, selector: {app: c}, ports: [{name: tcp-db, port: 5432, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 9090}]
  rules:
  - matches: [{method: {service: amesh.test.Echo, method: Hello}, headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: greeter-v2, port: 9090}]
  - matches: [{method: {service: amesh.test.Echo, method: Other}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed, value: grpc}]}
    backendRefs: [{name: greeter-v2, port: 9090}]
  - backendRefs: [{name: greeter, port: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: db, port: 5432}]
  rules: [{backendRefs: [{name: db-v2, port: 5432}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter-v2, namespace: shop}
spec:
  host: greeter-v2
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {maxRequestsPerConnection: 1}}
"#;

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

#[test]
fn grpc_calls_and_tcp_connections_follow_their_routes_through_the_waypoint() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    xds_edit(&mesh, |t| crate::waypoint::bind_shop(t) + OBJECTS);
    let waypoint = start_bound(&mut mesh);
    let any = |port| SocketAddr::from(([0u16; 8], port));
    let _grpc: Vec<_> = ["b", "c"]
        .iter()
        .map(|n| grpc::serve(mesh.pod(n), &format!("{n}-grpc"), any(GRPC_PORT)).expect("gRPC"))
        .collect();
    let _tcp = mesh.apps(&["b", "c"]);
    let greeter: SocketAddr = format!("{GREETER}:{GRPC_PORT}").parse().unwrap();
    let log = || waypoint.log();
    let a = mesh.pod("a");

    // The default rule: greeter (b). Five calls on one channel share one upstream HTTP/2
    // connection: the app sees one caller for all of them.
    let calls = grpc::call(a, greeter, "/amesh.test.Echo/Hello", &[], 5).expect("gRPC calls");
    for c in &calls {
        assert_eq!(field(c, "code"), "OK", "{c}\n{}", log());
        assert_eq!(field(c, "reply=served-by"), "b-grpc", "{c}");
        assert_eq!(field(c, "method"), "/amesh.test.Echo/Hello", "{c}");
    }
    let peers: std::collections::BTreeSet<&str> = calls.iter().map(|c| field(c, "peer")).collect();
    assert_eq!(peers.len(), 1, "one pooled upstream connection: {calls:?}");

    // Method and metadata: greeter-v2 (c), whose DestinationRule gives port 9090
    // `maxRequestsPerConnection: 1`: each call on a connection of its own.
    let v2 = grpc::call(
        a,
        greeter,
        "/amesh.test.Echo/Hello",
        &[("x-version", "v2")],
        3,
    )
    .expect("gRPC call");
    for c in &v2 {
        assert_eq!(field(c, "reply=served-by"), "c-grpc", "{v2:?}\n{}", log());
    }
    let peers: std::collections::BTreeSet<&str> = v2.iter().map(|c| field(c, "peer")).collect();
    assert_eq!(peers.len(), 3, "a connection per request: {v2:?}");
    let other = grpc::call(a, greeter, "/amesh.test.Echo/Other", &[], 1).expect("gRPC call");
    assert_eq!(field(&other[0], "reply=served-by"), "c-grpc", "{other:?}");
    assert!(
        other[0].contains("x-routed=grpc"),
        "the rule's header reached the app: {other:?}"
    );

    // A gRPC error travels back with its status, in the trailers.
    let failed = grpc::call(a, greeter, "/amesh.test.Echo/Fail", &[], 1).expect("gRPC call");
    assert_eq!(field(&failed[0], "code"), "UNAVAILABLE", "{failed:?}");
    assert!(failed[0].contains("asked to fail"), "{failed:?}");

    // The TCPRoute: db's connections reach db-v2 (c), as TCP.
    let db: SocketAddr = format!("{DB}:5432").parse().unwrap();
    for result in probe::connect(&mesh.probe, a, &[], &[db, db]).expect("connect") {
        let c = result.outcome.unwrap_or_else(|e| panic!("{e}\n{}", log()));
        assert!(c.reply.contains("served-by=c-app"), "{c:?}\n{}", log());
    }

    let m = metrics(&waypoint);
    let grpc_ok = waypoint_requests(
        &m,
        &[
            "request_protocol=\"grpc\"",
            "grpc_response_status=\"0\"",
            "response_code=\"200\"",
        ],
    );
    assert_eq!(
        grpc_ok, 9.0,
        "every successful call, status from the trailers: {m}"
    );
    assert_eq!(
        waypoint_requests(
            &m,
            &["request_protocol=\"grpc\"", "grpc_response_status=\"14\""]
        ),
        1.0,
        "the failed call, UNAVAILABLE: {m}"
    );
    let line = |prefix: &str, needles: &[&str]| {
        m.lines()
            .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        line("istio_request_bytes_count{", &["request_protocol=\"grpc\""]) >= 8.0,
        "request sizes observed: {m}"
    );
    assert!(
        line("istio_response_bytes_sum{", &["request_protocol=\"grpc\""]) > 0.0,
        "response sizes observed: {m}"
    );
    let db_v2 = "destination_service=\"db-v2.shop.svc.cluster.local\"";
    assert_eq!(
        line(
            "istio_tcp_connections_opened_total{",
            &[db_v2, "request_protocol=\"tcp\"", "reporter=\"waypoint\""]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        line("istio_tcp_connections_closed_total{", &[db_v2]),
        2.0,
        "{m}"
    );
    assert!(
        line("istio_tcp_received_bytes_total{", &[db_v2]) > 0.0
            && line("istio_tcp_sent_bytes_total{", &[db_v2]) > 0.0,
        "{m}"
    );
}
