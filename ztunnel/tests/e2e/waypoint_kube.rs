//! In Kubernetes mode the control plane deploys waypoints: applying a Gateway of class
//! istio-waypoint makes its ServiceAccount, Service and Deployment (owned by the Gateway),
//! and the Gateway is reported Programmed, with its Service's host name as its address, only
//! once a waypoint pod is ready; routes attached to a Service get their status per parent.
//! The API server is the list/watch emulator.

use crate::support::*;
use amesh_testbed::kube_api::KubeApi;
use serde_json::Value;
use std::time::Duration;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop, generation: 1}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";
const WAYPOINT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: wp-7d4-x, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}\nspec: {nodeName: node1, serviceAccountName: wp, containers: [{name: amesh-waypoint, image: w}]}\nstatus: {phase: Running, conditions: [{type: Ready, status: \"True\"}], podIPs: [{ip: 10.99.0.7}]}\n";

fn named<'a>(objects: &'a [Value], ns: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name)
}

fn condition<'a>(gw: &'a Value, type_: &str) -> &'a Value {
    gw["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[test]
fn applying_a_gateway_deploys_a_waypoint_and_its_status_follows_its_pod() {
    amesh_testbed::require_root();
    let api = KubeApi::start().expect("API emulator");
    let mut mesh = Mesh::try_build(&[pod("a", "shop", "node1")]).expect("build the mesh");
    let objects = std::fs::read_to_string(mesh.source_path()).expect("objects");
    api.apply_yaml(&objects).expect("objects into the API");
    api.apply_yaml(GATEWAY).expect("the Gateway");
    mesh.control_plane_source = vec![
        "--kube-url".into(),
        api.url(),
        "--waypoint-image".into(),
        "registry.example/amesh-waypoint:test".into(),
    ];
    mesh.try_start_control_plane().expect("control plane");
    let log = || {
        mesh.control_plane
            .as_ref()
            .map(|c| c.log())
            .unwrap_or_default()
    };
    let deployment = amesh_testbed::eventually(
        "the waypoint's Deployment, Service and ServiceAccount",
        Duration::from_secs(20),
        || {
            let d = api.objects("/apis/apps/v1/deployments");
            let s = api.objects("/api/v1/services");
            let a = api.objects("/api/v1/serviceaccounts");
            match (
                named(&d, "shop", "wp"),
                named(&s, "shop", "wp"),
                named(&a, "shop", "wp"),
            ) {
                (Some(d), Some(s), Some(_)) => Ok((d.clone(), s.clone())),
                _ => Err(log()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (d, s) = deployment;
    let template = &d["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/amesh-waypoint:test");
    assert_eq!(
        template["metadata"]["labels"]["istio.io/dataplane-mode"], "none",
        "the waypoint is never captured itself"
    );
    assert_eq!(
        template["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "wp"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "wp");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.windows(2).any(|w| w == ["--name", "wp"]), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--namespace", "shop"]),
        "{args:?}"
    );
    let gateways = api.objects("/apis/gateway.networking.k8s.io/v1/gateways");
    let uid = named(&gateways, "shop", "wp").expect("the Gateway")["metadata"]["uid"].clone();
    for owned in [&d, &s] {
        let owner = &owned["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["name"].as_str(),
                &owner["uid"]
            ),
            (Some("Gateway"), Some("wp"), &uid),
            "owned by the Gateway: {owned}"
        );
    }
    assert_eq!(s["spec"]["ports"][0]["port"], 15008);
    assert_eq!(
        s["metadata"]["labels"]["gateway.istio.io/managed"],
        "istio.io-mesh-controller"
    );

    // No ready pod yet: Accepted, not Programmed, no address.
    let gateway = || {
        api.objects("/apis/gateway.networking.k8s.io/v1/gateways")
            .into_iter()
            .find(|g| g["metadata"]["name"] == "wp")
            .unwrap_or_default()
    };
    amesh_testbed::eventually(
        "the Gateway Accepted, not Programmed",
        Duration::from_secs(20),
        || {
            let g = gateway();
            (condition(&g, "Accepted")["status"] == "True"
                && condition(&g, "Programmed")["status"] == "False"
                && g["status"]["addresses"]
                    .as_array()
                    .is_none_or(Vec::is_empty))
            .then_some(())
            .ok_or_else(|| format!("{g}\n{}", log()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Its pod is ready: Programmed, with the Service's host name.
    api.apply_yaml(WAYPOINT_POD).expect("the waypoint's pod");
    amesh_testbed::eventually("the Gateway Programmed", Duration::from_secs(20), || {
        let g = gateway();
        let address = &g["status"]["addresses"][0];
        (condition(&g, "Programmed")["status"] == "True"
            && address["type"] == "Hostname"
            && address["value"] == "wp.shop.svc.cluster.local")
            .then_some(())
            .ok_or_else(|| format!("{g}\n{}", log()))
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // Routes get their status per parent: accepted with its references resolved, accepted
    // with a backend that does not exist, refused for a bad regular expression.
    api.apply_yaml(ROUTES).expect("the routes");
    let route = |kind: &str, name: &str| {
        api.objects(&format!("/apis/gateway.networking.k8s.io/v1/{kind}"))
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_default()
    };
    let parent_condition = |r: &Value, type_: &str| {
        let parent = &r["status"]["parents"][0];
        let c = parent["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .cloned()
            .unwrap_or_default();
        (
            parent["controllerName"].as_str().unwrap_or("").to_string(),
            parent["parentRef"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let want = |kind: &str, name: &str, type_: &str, status: &str, reason: &str| {
        let r = route(kind, name);
        let (controller, parent, s, why, message) = parent_condition(&r, type_);
        (controller == "istio.io/gateway-controller"
            && parent == "web"
            && s == status
            && why == reason)
            .then_some(message)
            .ok_or_else(|| format!("{kind} {name}: {r}\n{}", log()))
    };
    amesh_testbed::eventually("the routes' status", Duration::from_secs(20), || {
        want("httproutes", "good", "Accepted", "True", "Accepted")?;
        want("httproutes", "good", "ResolvedRefs", "True", "ResolvedRefs")?;
        want("httproutes", "ghost", "Accepted", "True", "Accepted")?;
        let missing = want(
            "httproutes",
            "ghost",
            "ResolvedRefs",
            "False",
            "BackendNotFound",
        )?;
        assert!(
            missing.contains("Service shop/nowhere does not exist"),
            "{missing}"
        );
        let bad = want(
            "httproutes",
            "bad-regex",
            "Accepted",
            "False",
            "UnsupportedValue",
        )?;
        assert!(bad.contains("not a regular expression"), "{bad}");
        want("grpcroutes", "greeter", "Accepted", "True", "Accepted")?;
        Ok::<(), String>(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

const ROUTES: &str = r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.40, selector: {app: a}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ghost, namespace: shop, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: shop, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(("}}], backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{matches: [{method: {service: pkg.Greeter}}], backendRefs: [{name: web, port: 80}]}]
"#;
