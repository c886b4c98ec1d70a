//! istiod's waypoint binding rules, one table row each, through the whole translation.
#![allow(clippy::unwrap_used, reason = "tests")]

use crate::translate::{self, Mesh, Resources};
use amesh_kube::source;
use amesh_proto::workload as pb;
use std::path::Path;

/// A mesh with namespace `shop` (labels `ns`), a waypoint Gateway `wp` in `shop` (labels
/// `gw`, HBONE listener `allowed`, pod ready or not), a second waypoint `wp2`, a waypoint
/// `far` in namespace `other` (listener `far_allowed`), Service `web` (labels `svc`) and its
/// pod `web-0` (labels `pod`).
struct Case<'a> {
    ns: &'a str,
    gw: &'a str,
    ready: bool,
    svc: &'a str,
    pod: &'a str,
    far_allowed: &'a str,
    class: &'a str,
}

const BASE: Case<'static> = Case {
    ns: "",
    gw: "",
    ready: true,
    svc: "",
    pod: "",
    far_allowed: "",
    class: "",
};

fn waypoint(ns: &str, name: &str, labels: &str, allowed: &str, ready: bool, ip: &str) -> String {
    let ready = if ready { "True" } else { "False" };
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE{allowed}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, namespace: {ns}, labels: {{gateway.networking.k8s.io/gateway-name: {name}, istio.io/dataplane-mode: none}}}}
spec: {{nodeName: node-1, serviceAccountName: {name}, containers: [{{name: w, image: w}}]}}
status: {{phase: Running, conditions: [{{type: Ready, status: "{ready}"}}], podIPs: [{{ip: {ip}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/use-waypoint: {name}}}}}
spec:
  clusterIP: {ip}0
  selector: {{gateway.networking.k8s.io/gateway-name: {name}}}
  ports: [{{name: mesh, port: 15008}}]
---
"#
    )
}

fn translated(c: &Case<'_>) -> Resources {
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, {ns}}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: other, labels: {{team: far}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: istio-waypoint, labels: {{{class}}}}}
spec: {{controllerName: istio.io/mesh-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop, labels: {{{svc}}}}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: shop, labels: {{app: web, {pod}}}}}
spec: {{nodeName: node-1, containers: [{{name: c, image: c}}]}}
status: {{phase: Running, conditions: [{{type: Ready, status: "True"}}], podIPs: [{{ip: 10.200.0.2}}]}}
---
"#,
        ns = c.ns,
        class = c.class,
        svc = c.svc,
        pod = c.pod,
    );
    yaml += &waypoint("shop", "wp", c.gw, "", c.ready, "10.200.0.9");
    yaml += &waypoint(
        "shop",
        "wp2",
        "istio.io/waypoint-for: all",
        "",
        true,
        "10.200.0.8",
    );
    yaml += &waypoint("other", "far", "", c.far_allowed, true, "10.200.0.7");
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("mesh.yaml"), &yaml, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    translate::translate(&snap, &Mesh::default())
}

fn address(r: &Resources, key: &str) -> pb::address::Type {
    r.addresses
        .get(key)
        .and_then(|a| a.r#type.clone())
        .unwrap_or_else(|| panic!("{key} not translated"))
}

/// The waypoint a Service or Workload got, as `namespace/hostname`, or "-".
fn bound(r: &Resources, key: &str) -> String {
    let wp = match address(r, key) {
        pb::address::Type::Service(s) => s.waypoint,
        pb::address::Type::Workload(w) => w.waypoint,
    };
    match wp.and_then(|g| g.destination) {
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            format!("{}/{}", h.namespace, h.hostname)
        }
        Some(other) => format!("{other:?}"),
        None => "-".into(),
    }
}

/// The reasons reported for an object named `name`.
fn reported(r: &Resources, name: &str) -> Vec<String> {
    r.errors
        .iter()
        .filter(|e| e.name == name)
        .map(|e| e.reason.clone())
        .collect()
}

const SVC: &str = "shop/web.shop.svc.cluster.local";
const POD: &str = "Kubernetes//v1/Pod/shop/web-0";
const WP: &str = "shop/wp.shop.svc.cluster.local";
const WP2: &str = "shop/wp2.shop.svc.cluster.local";

#[test]
fn binding_follows_istiods_rules() {
    // (what, case, service's waypoint, pod's waypoint, a report on the service, on the pod)
    let cases: Vec<(&str, Case<'_>, &str, &str, &str, &str)> = vec![
        (
            "namespace label, service-only waypoint: the pod's mismatch is silent",
            Case {
                ns: "istio.io/use-waypoint: wp",
                ..BASE
            },
            WP,
            "-",
            "",
            "",
        ),
        (
            "waypoint-for: all binds both",
            Case {
                ns: "istio.io/use-waypoint: wp",
                gw: "istio.io/waypoint-for: all",
                ..BASE
            },
            WP,
            WP,
            "",
            "",
        ),
        (
            "the GatewayClass's waypoint-for applies when the Gateway says nothing",
            Case {
                ns: "istio.io/use-waypoint: wp",
                class: "istio.io/waypoint-for: workload",
                ..BASE
            },
            "-",
            WP,
            "",
            "",
        ),
        (
            "the Gateway's waypoint-for wins over its class's",
            Case {
                ns: "istio.io/use-waypoint: wp",
                class: "istio.io/waypoint-for: workload",
                gw: "istio.io/waypoint-for: service",
                ..BASE
            },
            WP,
            "-",
            "",
            "",
        ),
        (
            "none on the object blocks the namespace's waypoint",
            Case {
                ns: "istio.io/use-waypoint: wp",
                svc: "istio.io/use-waypoint: none",
                ..BASE
            },
            "-",
            "-",
            "",
            "",
        ),
        (
            "the object's own label wins over the namespace's",
            Case {
                ns: "istio.io/use-waypoint: wp",
                svc: "istio.io/use-waypoint: wp2",
                pod: "istio.io/use-waypoint: wp2",
                ..BASE
            },
            WP2,
            WP2,
            "",
            "",
        ),
        (
            "a mismatch asked for on the object is reported",
            Case {
                pod: "istio.io/use-waypoint: wp",
                ..BASE
            },
            "-",
            "-",
            "",
            "is for service traffic (istio.io/waypoint-for), not workload",
        ),
        (
            "waypoint-for: none binds nothing",
            Case {
                svc: "istio.io/use-waypoint: wp",
                gw: "istio.io/waypoint-for: none",
                ..BASE
            },
            "-",
            "-",
            "is for none traffic",
            "",
        ),
        (
            "a waypoint that does not exist binds nothing, and says so",
            Case {
                svc: "istio.io/use-waypoint: nope",
                ..BASE
            },
            "-",
            "-",
            "waypoint shop/nope does not exist: traffic stays direct",
            "",
        ),
        (
            // Readiness is judged before the traffic type, as istiod does: both hear of it.
            "a waypoint with no ready pod binds nothing, and says so",
            Case {
                ns: "istio.io/use-waypoint: wp",
                ready: false,
                ..BASE
            },
            "-",
            "-",
            "waypoint shop/wp has no ready pod yet",
            "waypoint shop/wp has no ready pod yet",
        ),
        (
            "another namespace's waypoint, its listener allowing only its own namespace",
            Case {
                svc: "istio.io/use-waypoint: far, istio.io/use-waypoint-namespace: other",
                ..BASE
            },
            "-",
            "-",
            "does not allow namespace shop",
            "",
        ),
        (
            "another namespace's waypoint that allows all namespaces",
            Case {
                svc: "istio.io/use-waypoint: far, istio.io/use-waypoint-namespace: other",
                far_allowed: ", allowedRoutes: {namespaces: {from: All}}",
                ..BASE
            },
            "other/far.other.svc.cluster.local",
            "-",
            "",
            "",
        ),
        (
            "a namespace selector on the waypoint's listener",
            Case {
                svc: "istio.io/use-waypoint: far, istio.io/use-waypoint-namespace: other",
                ns: "team: near",
                far_allowed: ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: near}}}}",
                ..BASE
            },
            "other/far.other.svc.cluster.local",
            "-",
            "",
            "",
        ),
    ];
    for (what, case, want_svc, want_pod, svc_report, pod_report) in cases {
        let r = translated(&case);
        assert_eq!(bound(&r, SVC), want_svc, "{what}: the service");
        assert_eq!(bound(&r, POD), want_pod, "{what}: the pod");
        for (name, want) in [("web", svc_report), ("web-0", pod_report)] {
            let got = reported(&r, name);
            if want.is_empty() {
                assert!(got.is_empty(), "{what}: {name} reported {got:?}");
            } else {
                assert!(
                    got.iter().any(|g| g.contains(want)),
                    "{what}: {name} should report {want:?}, got {got:?}"
                );
            }
        }
    }
}

#[test]
fn waypoints_themselves_are_hbone_workloads_without_a_waypoint() {
    // The namespace asks for `wp` and the waypoint's own Service carries the label too.
    let r = translated(&Case {
        ns: "istio.io/use-waypoint: wp",
        gw: "istio.io/waypoint-for: all",
        ..BASE
    });
    assert_eq!(bound(&r, "shop/wp.shop.svc.cluster.local"), "-");
    let pb::address::Type::Workload(w) = address(&r, "Kubernetes//v1/Pod/shop/wp-0") else {
        panic!("the waypoint pod is a workload");
    };
    assert_eq!(
        w.tunnel_protocol,
        pb::TunnelProtocol::Hbone as i32,
        "it terminates HBONE itself"
    );
    assert_eq!(w.waypoint, None);
    assert_eq!(w.service_account, "wp");
    assert!(
        w.services.contains_key(WP),
        "its Service lists it as an endpoint: {:?}",
        w.services
    );
}

#[test]
fn the_binding_reaches_ztunnel_as_istiods_workload_api_sends_it() {
    let r = translated(&Case {
        ns: "istio.io/use-waypoint: wp",
        gw: "istio.io/waypoint-for: all",
        ..BASE
    });
    let want = pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "shop".into(),
                hostname: "wp.shop.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    };
    let pb::address::Type::Service(s) = address(&r, SVC) else {
        panic!("a service");
    };
    assert_eq!(s.waypoint, Some(want.clone()));
    let pb::address::Type::Workload(w) = address(&r, POD) else {
        panic!("a workload");
    };
    assert_eq!(w.waypoint, Some(want));
    // The waypoint's Service exposes 15008 and lists the waypoint pod with 15008.
    let pb::address::Type::Service(ws) = address(&r, "shop/wp.shop.svc.cluster.local") else {
        panic!("the waypoint's service");
    };
    assert_eq!(ws.ports[0].service_port, 15008);
    assert_eq!(ws.ports[0].target_port, 15008);
}
