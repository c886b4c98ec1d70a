#![allow(clippy::unwrap_used, reason = "tests")]

use crate::translate;
use amesh_kube::source;
use amesh_proto::{security as sec, workload as pb};
use std::path::Path;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-0, namespace: shop, labels: {app: cart, version: v2}}
spec:
  nodeName: node-1
  serviceAccountName: cart
  containers: [{name: cart, image: cart, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  conditions: [{type: Ready, status: "True"}]
  podIP: 10.200.0.2
  podIPs: [{ip: 10.200.0.2}, {ip: "fd00:200::2"}]
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: shop, labels: {app: cart, istio.io/dataplane-mode: none}}
spec: {containers: [{name: c, image: c}]}
status: {phase: Pending, podIPs: [{ip: 10.200.0.3}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec: {containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.200.0.4}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: shop}
spec: {hostNetwork: true, containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.200.0.5}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{from: [{source: {namespaces: [web]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}, portLevelMtls: {"9090": {mode: PERMISSIVE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: shop}
spec: 5
"#;

fn translated() -> (translate::Resources, Vec<source::ObjectError>) {
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("shop.yaml"), OBJECTS, &mut snap, &mut errors);
    (
        translate::translate(&snap, &translate::Mesh::default()),
        errors,
    )
}

fn workload(r: &translate::Resources, uid: &str) -> pb::Workload {
    match r.addresses.get(uid).and_then(|a| a.r#type.clone()) {
        Some(pb::address::Type::Workload(w)) => w,
        other => panic!("{uid}: {other:?}"),
    }
}

#[test]
fn pods_become_workloads_with_istio_enrollment_rules() {
    let (r, _) = translated();
    let cart = workload(&r, "Kubernetes//v1/Pod/shop/cart-0");
    assert_eq!(cart.tunnel_protocol, pb::TunnelProtocol::Hbone as i32);
    assert_eq!(
        (cart.service_account.as_str(), cart.node.as_str()),
        ("cart", "node-1")
    );
    assert_eq!(
        cart.addresses,
        vec![
            vec![10, 200, 0, 2],
            vec![0xfd, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        ]
    );
    assert_eq!(
        (
            cart.canonical_name.as_str(),
            cart.canonical_revision.as_str()
        ),
        ("cart", "v2")
    );
    assert_eq!(
        (cart.workload_name.as_str(), cart.workload_type),
        ("cart-0", pb::WorkloadType::Pod as i32),
        "a pod without a controller is its own workload"
    );
    assert_eq!(cart.status, pb::WorkloadStatus::Healthy as i32);
    let ports = &cart.services["shop/cart.shop.svc.cluster.local"].ports;
    assert_eq!(
        (ports[0].service_port, ports[0].target_port),
        (80, 8080),
        "named target port resolved from the pod"
    );
    assert_eq!(
        cart.authorization_policies,
        [
            "shop/allow-web",
            "istio-system/converted_peer_authentication_strict_except_9090"
        ],
        "its selector policy, then its mTLS policy"
    );
    for uid in [
        "Kubernetes//v1/Pod/shop/opted-out",
        "Kubernetes//v1/Pod/legacy/old",
        "Kubernetes//v1/Pod/shop/host",
    ] {
        assert_eq!(
            workload(&r, uid).tunnel_protocol,
            pb::TunnelProtocol::None as i32,
            "{uid} is not in the mesh"
        );
    }
    assert_eq!(
        workload(&r, "Kubernetes//v1/Pod/shop/opted-out").status,
        pb::WorkloadStatus::Unhealthy as i32
    );
}

#[test]
fn services_and_policies_translate_and_bad_objects_are_reported() {
    let (r, errors) = translated();
    let Some(pb::address::Type::Service(svc)) = r.addresses["shop/cart.shop.svc.cluster.local"]
        .r#type
        .clone()
    else {
        panic!("service")
    };
    assert_eq!(svc.addresses[0].address, vec![10, 96, 0, 10]);
    assert_eq!(
        (svc.ports[0].service_port, svc.ports[0].target_port),
        (80, 0),
        "named: resolved per workload"
    );

    let allow = &r.authorizations["shop/allow-web"];
    assert_eq!(
        (allow.scope, allow.action),
        (
            sec::Scope::WorkloadSelector as i32,
            sec::Action::Allow as i32
        )
    );
    let key = "istio-system/converted_peer_authentication_strict_except_9090";
    let strict = &r.authorizations[key];
    assert_eq!(
        (strict.scope, strict.action),
        (
            sec::Scope::WorkloadSelector as i32,
            sec::Action::Deny as i32
        )
    );
    let cart = match &r.addresses["Kubernetes//v1/Pod/shop/cart-0"].r#type {
        Some(pb::address::Type::Workload(w)) => w,
        other => panic!("{other:?}"),
    };
    assert!(
        cart.authorization_policies.iter().any(|k| k == key),
        "the workload references its mTLS policy: {:?}",
        cart.authorization_policies
    );
    let m = &strict.groups[0].rules[0].matches[0];
    assert_eq!(m.not_destination_ports, vec![9090]);
    assert_eq!(m.not_principals.len(), 1);

    assert!(
        r.errors.iter().any(|e| e.kind == "AuthorizationPolicy"
            && (e.namespace.as_str(), e.name.as_str()) == ("shop", "audit")
            && e.reason.contains("not supported at L4")),
        "{:?}",
        r.errors
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].kind.as_str(), errors[0].name.as_str()),
        ("Pod", "broken")
    );
    assert!(
        errors[0].to_string().starts_with("shop.yaml: Pod broken:"),
        "{}",
        errors[0]
    );
}

/// A service without a selector gets its workloads from its EndpointSlices, one per address
/// that is not a pod, as Istio's ambient index does.
#[test]
fn endpoint_slices_back_services_without_selectors() {
    const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db-proxy, namespace: data}
spec: {nodeName: node-1, containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.200.0.7}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {clusterIP: 10.96.5.5, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 15432}]
endpoints:
- addresses: [192.0.2.10]
- addresses: [192.0.2.11]
  conditions: {ready: false}
- addresses: [10.200.0.7]
"#;
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("db.yaml"), OBJECTS, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let r = translate::translate(&snap, &translate::Mesh::default());
    let slice_workloads: Vec<&pb::Workload> = r
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(pb::address::Type::Workload(w)) if w.uid.contains("EndpointSlice") => Some(w),
            _ => None,
        })
        .collect();
    let uids: Vec<&str> = slice_workloads.iter().map(|w| w.uid.as_str()).collect();
    assert_eq!(
        uids,
        [
            "Kubernetes/discovery.k8s.io/EndpointSlice/data/db-abc/192.0.2.10",
            "Kubernetes/discovery.k8s.io/EndpointSlice/data/db-abc/192.0.2.11",
        ],
        "one per address, the pod's address left to the pod"
    );
    let w = slice_workloads[0];
    assert_eq!(w.tunnel_protocol, pb::TunnelProtocol::None as i32);
    assert_eq!(w.addresses, vec![vec![192, 0, 2, 10]]);
    let ports = &w.services["data/db.data.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (5432, 15432));
    assert_eq!(
        slice_workloads[1].status,
        pb::WorkloadStatus::Unhealthy as i32
    );
}

/// Integer map keys, as people write them in YAML (`9090:`), read like kubectl sends them.
#[test]
fn yaml_integer_keys_read_as_kubectl_sends_them() {
    const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: ns}\nspec:\n  selector: {matchLabels: {app: c}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {9090: {mode: PERMISSIVE}}\n";
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("pa.yaml"), PA, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(snap.peer_authentications.len(), 1);
}

/// The most specific PeerAuthentication wins, port by port: mesh STRICT, a namespace
/// PERMISSIVE under it, a workload STRICT in that namespace except one port.
#[test]
fn peer_authentication_precedence() {
    const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a}
spec: {containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec: {containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: legacy, labels: {app: db}}
spec: {containers: [{name: c, image: c}]}
status: {phase: Running, podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: legacy}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls: {9187: {mode: PERMISSIVE}}
"#;
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("pa.yaml"), OBJECTS, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let r = translate::translate(&snap, &translate::Mesh::default());
    let refs = |ns: &str, name: &str| -> Vec<String> {
        match &r.addresses[&format!("Kubernetes//v1/Pod/{ns}/{name}")].r#type {
            Some(pb::address::Type::Workload(w)) => w.authorization_policies.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        refs("a", "p"),
        ["istio-system/converted_peer_authentication_strict"],
        "mesh STRICT"
    );
    assert!(
        refs("legacy", "old").is_empty(),
        "namespace PERMISSIVE overrides the mesh"
    );
    assert_eq!(
        refs("legacy", "db"),
        ["istio-system/converted_peer_authentication_strict_except_9187"],
        "the workload's own STRICT, with its port exception"
    );
    let m = &r.authorizations["istio-system/converted_peer_authentication_strict_except_9187"]
        .groups[0]
        .rules[0]
        .matches[0];
    assert_eq!(m.not_destination_ports, vec![9187]);
}

/// An AuthorizationPolicy with HTTP attributes is translated as istiod does for ztunnel (its
/// ALLOW rules that need them dropped, nothing private on the wire) and reported as enforced
/// in part, naming the attributes.
#[test]
fn http_attributes_are_reported_and_never_reach_ztunnel() {
    let objects = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only, namespace: shop}\nspec:\n  rules: [{to: [{operation: {ports: ['8080'], methods: [GET]}}]}]\n";
    let mut snap = source::Snapshot::default();
    let mut errors = Vec::new();
    source::read_documents(Path::new("l7.yaml"), objects, &mut snap, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let r = translate::translate(&snap, &translate::Mesh::default());
    let p = &r.authorizations["shop/get-only"];
    assert_eq!(p.action, sec::Action::Allow as i32);
    assert!(
        p.groups.is_empty(),
        "the ALLOW rule needing GET allows nothing: {p:?}"
    );
    let [report] = r.errors.as_slice() else {
        panic!("one report: {:?}", r.errors)
    };
    assert!(report.partial, "{report}");
    assert_eq!(report.what().1, "PartiallyEnforced");
    assert!(report.reason.contains("(methods)"), "{report}");
}
