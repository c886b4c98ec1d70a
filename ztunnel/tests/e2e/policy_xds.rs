//! L4 policy configured through the control plane (Istio's AuthorizationPolicy and
//! PeerAuthentication objects in its source): plaintext refused under STRICT with a port
//! exception, a principal-based ALLOW, and a live connection closed when it stops being
//! allowed.

use crate::{
    support::*,
    xds::{edit_source, policy_names, wait_dump, xds_mesh_of},
};
use std::time::Duration;

const STRICT: &str = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: ns-c}\nspec:\n  selector: {matchLabels: {app: c}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {9090: {mode: PERMISSIVE}}\n";
const ALLOW_A: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-a, namespace: ns-c}\nspec:\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/ns-a/sa/a]}}]}]\n";

#[test]
fn strict_and_allow_from_the_control_plane_are_enforced_and_close_live_connections() {
    let mesh = xds_mesh_of(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ]);
    let _apps = amesh_testbed::probe::serve(
        &mesh.probe,
        mesh.pod("c"),
        "c-app",
        &["[::]:8080".parse().unwrap(), "[::]:9090".parse().unwrap()],
    )
    .unwrap();
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("c"),
        &["[::]:7000".parse().unwrap()],
    )
    .unwrap();
    let (p8080, p9090) = (mesh.v4("c", 8080), mesh.v4("c", 9090));
    assert_eq!(
        mesh.connect_one("d", p8080).served_by(),
        "c-app",
        "PERMISSIVE by default"
    );

    edit_source(&mesh, |t| format!("{t}{STRICT}"));
    wait_dump(&mesh, "node2", "the converted STRICT policy", |v| {
        policy_names(v).iter().any(|n| n.contains("strict"))
    });
    // STRICT refuses plaintext, in the name of the converted policy.
    refused_because(&mesh, "d", p8080, "node2", STRICT_EXCEPT_9090);
    assert_eq!(
        mesh.connect_one("d", p9090).served_by(),
        "c-app",
        "the port-level PERMISSIVE exception"
    );
    assert_eq!(
        mesh.connect_one("b", p8080).served_by(),
        "c-app",
        "mTLS is unaffected"
    );

    let mut pipe = amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("b"), mesh.v4("c", 7000))
        .expect("pipe from b");
    pipe.send_line("before").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("before")
    );

    edit_source(&mesh, |t| format!("{t}{ALLOW_A}"));
    wait_dump(&mesh, "node2", "the ALLOW policy", |v| {
        policy_names(v).iter().any(|n| n.contains("allow-a"))
    });
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("closed"),
        "b's open connection is closed once only a is allowed"
    );
    assert_eq!(
        mesh.connect_one("a", p8080).served_by(),
        "c-app",
        "a is allowed"
    );
    // b is not.
    refused_because(&mesh, "b", p8080, "node2", "no ALLOW policy matched");
    drop(pipe);
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
