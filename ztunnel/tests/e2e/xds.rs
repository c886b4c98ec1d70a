//! ztunnels fed by the amesh control plane over delta ADS (mutual TLS), from a directory of
//! Kubernetes YAML: pods and policies added or removed there reach both ztunnels and take
//! effect; with the control plane gone the last state keeps serving, and a restarted one
//! resyncs without re-sending what the ztunnels already hold.

use crate::support::*;
use std::time::Duration;

fn specs() -> Vec<PodSpec> {
    vec![pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")]
}

const DENY_NS_A: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-ns-a, namespace: ns-c}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [ns-a]}}]}]\n";

/// A mesh whose ztunnels are fed by a freshly started control plane, every node ready.
fn xds_mesh() -> Mesh {
    xds_mesh_of(&specs())
}

/// The same for any pods.
pub fn xds_mesh_of(specs: &[PodSpec]) -> Mesh {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(specs).expect("build the mesh");
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start(&[]).expect("start the nodes");
    let nodes: Vec<&str> = mesh.nodes.iter().map(|n| n.name).collect();
    for node in nodes {
        mesh.try_wait_ready(node).unwrap_or_else(|e| {
            let cp = mesh
                .control_plane
                .as_ref()
                .map(|c| c.log())
                .unwrap_or_default();
            panic!(
                "{e}\ncontrol plane log:\n{cp}\nztunnel log:\n{}",
                mesh.node(node).ztunnel.log()
            )
        });
    }
    mesh
}

/// Waits until `node`'s config dump satisfies `ok`.
pub fn wait_dump(mesh: &Mesh, node: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let z = &mesh.node(node).ztunnel;
    amesh_testbed::eventually(
        format!("{node} showing {what}"),
        Duration::from_secs(20),
        || {
            let (_, dump) = z.http("Admin", "GET", "/config_dump");
            let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
            if ok(&v) {
                Ok(())
            } else {
                Err(format!("{dump}\nztunnel log:\n{}", z.log()))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

pub fn policy_names(v: &serde_json::Value) -> Vec<String> {
    v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

pub fn workload_names(v: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = v["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

pub fn edit_source(mesh: &Mesh, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(mesh.source_path()).expect("read the source");
    std::fs::write(mesh.source_path(), edit(text)).expect("write the source");
}

#[test]
fn pods_and_policies_from_the_control_plane_reach_both_ztunnels() {
    let mesh = xds_mesh();
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "both pods", |v| {
            workload_names(v) == ["a", "c"]
        });
    }
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");

    // Garbage on the control plane's port (no TLS client certificate) loses only that
    // connection: the update below still reaches both ztunnels.
    let xds = mesh.xds.expect("xds address");
    let mut garbage = std::net::TcpStream::connect(xds).expect("connect to the control plane");
    garbage
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    std::io::Write::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let mut sink = Vec::new();
    let closed = std::io::Read::read_to_end(&mut garbage, &mut sink);
    assert!(
        closed.is_ok(),
        "the control plane closes a garbage connection: {closed:?}"
    );

    edit_source(&mesh, |t| format!("{t}{DENY_NS_A}"));
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "the new policy", |v| {
            policy_names(v).iter().any(|n| n.contains("deny-ns-a"))
        });
    }
    // The policy from the control plane is enforced.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");

    edit_source(&mesh, |t| t.replace(DENY_NS_A, ""));
    wait_dump(&mesh, "node2", "the policy removed", |v| {
        policy_names(v).is_empty()
    });
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");

    // A pod added to the source appears in both ztunnels; removing it removes it.
    let extra = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: ns-c}\nspec: {nodeName: node2, containers: [{name: app, image: app}]}\nstatus: {phase: Running, conditions: [{type: Ready, status: \"True\"}], podIPs: [{ip: 10.99.0.9}]}\n";
    edit_source(&mesh, |t| format!("{t}{extra}"));
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "the added pod", |v| {
            workload_names(v) == ["a", "c", "late"]
        });
    }
    edit_source(&mesh, |t| t.replace(extra, ""));
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "the pod removed", |v| {
            workload_names(v) == ["a", "c"]
        });
    }
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_last_state_serves_while_the_control_plane_is_away_and_a_restart_resyncs() {
    let mut mesh = xds_mesh();
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    mesh.stop_control_plane();
    assert_eq!(
        mesh.connect_one("a", c).served_by(),
        "c-app",
        "traffic flows on the last configuration"
    );
    let (status, body) = mesh
        .node("node2")
        .ztunnel
        .http("Readiness", "GET", "/healthz/ready");
    assert_eq!(status, 200, "still ready without the control plane: {body}");

    edit_source(&mesh, |t| format!("{t}{DENY_NS_A}"));
    mesh.try_start_control_plane()
        .expect("restart the control plane");
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "the policy after the restart", |v| {
            policy_names(v).iter().any(|n| n.contains("deny-ns-a"))
        });
        wait_dump(&mesh, node, "both pods, once each", |v| {
            workload_names(v) == ["a", "c"]
        });
    }
    // The resynced policy is enforced.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");
    let (_, metrics) = mesh
        .node("node1")
        .ztunnel
        .http("Metrics", "GET", "/metrics");
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value("istio_xds_connection_terminations_total") >= 1.0,
        "the lost stream is counted:\n{metrics}"
    );
    assert!(
        value("istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"}") >= 2.0,
        "responses are counted per type (one per stream at least):\n{metrics}"
    );
    assert!(value("istio_xds_message_bytes_total") > 0.0, "{metrics}");
    // The ztunnels reported what they held, so the restarted control plane sent them no
    // address again (only the new policy).
    let log = mesh.control_plane.as_ref().expect("running").log();
    let address_pushes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" push") && l.contains("istio.workload.Address"))
        .collect();
    assert_eq!(address_pushes.len(), 2, "one resync per ztunnel:\n{log}");
    assert!(
        address_pushes.iter().all(|l| l.contains("updated=0")),
        "nothing re-sent:\n{log}"
    );
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn pod_certificates_come_from_the_control_plane_ca() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start_fed_by_control_plane(&mesh.node_token_path())
        .expect("start the nodes");
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)
            .unwrap_or_else(|e| panic!("{e}\nztunnel log:\n{}", mesh.node(node).ztunnel.log()));
    }
    let _apps = mesh.apps(&["c"]);
    assert_eq!(
        mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
        "c-app"
    );
    let log = mesh.control_plane.as_ref().expect("running").log();
    for id in [
        "spiffe://cluster.local/ns/ns-a/sa/a",
        "spiffe://cluster.local/ns/ns-c/sa/c",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("certificate signed") && l.contains(id)),
            "the control plane's CA signed {id}:\n{log}"
        );
    }
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Fail closed: when the control plane refuses ztunnel (here: a wrong node token), it gets
/// neither configuration nor certificates, is not ready, and its pods' traffic is refused
/// rather than treated as leaving the mesh (which would mean plaintext).
#[test]
fn refused_by_the_control_plane_traffic_is_refused_not_sent_in_plaintext() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&specs()).expect("build the mesh");
    mesh.try_start_control_plane().expect("control plane");
    let wrong = mesh.dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-node-token\n").expect("token");
    mesh.try_start_fed_by_control_plane(&wrong)
        .expect("start the nodes");
    let _apps = mesh.apps(&["c"]);
    let (status, body) = mesh
        .node("node2")
        .ztunnel
        .http("Readiness", "GET", "/healthz/ready");
    assert_eq!(status, 503, "not ready without certificates: {body}");
    assert!(body.contains("pod certificates"), "{body}");
    let outcome = mesh
        .connect("a", &["--timeout-ms", "3000"], &[mesh.v4("c", APP_PORT)])
        .remove(0)
        .outcome;
    assert!(
        outcome.is_err(),
        "a reached c without certificates: {outcome:?}"
    );
    assert!(
        mesh.node("node1").ztunnel.log().contains("fail closed"),
        "the refusal says why"
    );
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
