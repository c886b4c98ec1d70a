//! The control plane watching a Kubernetes API (the list/watch emulator) instead of a
//! directory: the same pods and policies reach the ztunnels; changes made through the API take
//! effect, also after the API server compacts its history (the watches get 410 Gone and list
//! again).

use crate::{
    support::*,
    xds::{policy_names, wait_dump, workload_names},
};
use amesh_testbed::kube_api::KubeApi;
use std::time::Duration;

const DENY_NS_A: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-ns-a, namespace: ns-c}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [ns-a]}}]}]\n";
const AUDIT: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: audit-all, namespace: ns-c}\nspec: {action: AUDIT, rules: [{}]}\n";
const BROKEN: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: ns-c}\nspec: {rules: 5}\n";
const LATE_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: ns-c}\nspec: {nodeName: node2, containers: [{name: app, image: app}]}\nstatus: {phase: Running, conditions: [{type: Ready, status: \"True\"}], podIPs: [{ip: 10.99.0.9}]}\n";

/// Waits until both ztunnels' config dumps satisfy `ok`.
fn wait(mesh: &Mesh, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    for node in ["node1", "node2"] {
        wait_dump(mesh, node, what, &ok);
    }
}

#[test]
fn the_control_plane_follows_the_kubernetes_api() {
    amesh_testbed::require_root();
    let api = KubeApi::start().expect("API emulator");
    let mut mesh = Mesh::try_build(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")])
        .expect("build the mesh");
    let objects = std::fs::read_to_string(mesh.source_path()).expect("objects");
    api.apply_yaml(&objects).expect("objects into the API");
    mesh.control_plane_source = vec!["--kube-url".into(), api.url()];
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start(&[]).expect("start the nodes");
    wait(&mesh, "both pods", |v| workload_names(v) == ["a", "c"]);
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");

    // A policy ztunnel cannot enforce is reported on the object (a Warning event), and the
    // rest keeps flowing.
    api.apply_yaml(AUDIT).expect("audit policy");
    api.apply_yaml(BROKEN).expect("broken policy");
    amesh_testbed::eventually(
        "Warning events for the AUDIT and the broken policy",
        Duration::from_secs(20),
        || {
            let events = api.objects("/api/v1/events");
            let reported = |name: &str, says: &str| {
                events.iter().any(|e| {
                    e["involvedObject"]["name"] == name
                        && e["involvedObject"]["kind"] == "AuthorizationPolicy"
                        && e["type"] == "Warning"
                        && e["message"].as_str().is_some_and(|m| m.contains(says))
                })
            };
            if reported("audit-all", "AUDIT") && reported("broken", "does not parse") {
                Ok(())
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    api.apply_yaml(DENY_NS_A).expect("policy");
    wait(&mesh, "the policy", |v| {
        policy_names(v).iter().any(|n| n.contains("deny-ns-a"))
    });
    // The policy from the API is enforced.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");

    // History compacted: every watch must list again before it sees the deletion.
    api.compact();
    api.delete(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "ns-c",
        "deny-ns-a",
    )
    .expect("delete the policy");
    wait(&mesh, "the policy removed", |v| policy_names(v).is_empty());
    let log = mesh.control_plane.as_ref().expect("running").log();
    assert!(
        log.lines()
            .any(|l| l.contains("watch failed") && l.contains("Expired")),
        "the watches met the 410 (reason Expired) and listed again:\n{log}"
    );
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");

    api.apply_yaml(LATE_POD).expect("pod");
    wait(&mesh, "the new pod", |v| {
        workload_names(v) == ["a", "c", "late"]
    });
    api.delete("v1", "Pod", "ns-c", "late")
        .expect("delete the pod");
    wait(&mesh, "the pod removed", |v| {
        workload_names(v) == ["a", "c"]
    });

    let left = mesh.close();
    drop(api);
    assert!(left.is_empty(), "left behind: {left:?}");
}
