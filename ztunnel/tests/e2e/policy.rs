//! L4 policy enforced at the destination ztunnel, configured through the local file.

use crate::support::*;
use std::time::Duration;

const PEERS: fn() -> Vec<PodSpec> = || {
    vec![
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ]
};

fn add_policy(text: String, yaml: &str) -> String {
    format!("{text}policies:\n{yaml}")
}

#[test]
fn allow_and_deny_by_principal_and_namespace() {
    let mesh = Mesh::new(&PEERS());
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    assert!(
        !refused(&mesh, "a", c) && !refused(&mesh, "b", c),
        "no policy: everything in the mesh is allowed"
    );

    let allow_a = "- name: allow-a\n  namespace: ns-c\n  scope: Namespace\n  action: Allow\n  rules: [{clauses: [{matches: [{principals: [cluster.local/ns/ns-a/sa/a]}]}]}]\n";
    mesh.update_config(&["allow-a"], |t| add_policy(t, allow_a));
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");
    // b is not the allowed principal.
    refused_because(&mesh, "b", c, "node2", "no ALLOW policy matched");

    let deny_ns_a = "- name: deny-ns-a\n  namespace: ns-c\n  scope: Namespace\n  action: Deny\n  rules: [{clauses: [{matches: [{namespaces: [ns-a]}]}]}]\n";
    mesh.update_config(&["deny-ns-a"], |t| t.replace(allow_a, deny_ns_a));
    // Namespace ns-a is denied.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");
    assert_eq!(mesh.connect_one("b", c).served_by(), "c-app");

    let z = &mesh.node("node2").ztunnel;
    assert!(
        z.log().contains("denied by ns-c/deny-ns-a"),
        "the access log names the deciding policy"
    );
    let (_, metrics) = z.http("Metrics", "GET", "/metrics");
    let denied = metrics.lines().any(|l| {
        l.starts_with("istio_tcp_connections_failed_total")
            && l.contains("response_flags=\"DENY\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"")
    });
    assert!(
        denied,
        "a DENY is counted with response_flags=DENY:\n{metrics}"
    );
    // As Istio counts: every attempt opened and, once over, closed; the failed ones (a's
    // refused attempt) counted failed besides, and closed with their flag.
    let from_a = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/ns-a/sa/a\"",
    ];
    amesh_testbed::eventually("a's attempts all closed", Duration::from_secs(10), || {
        let (_, metrics) = z.http("Metrics", "GET", "/metrics");
        let count = |name: &str, extra: &[&str]| {
            let labels: Vec<&str> = from_a.iter().chain(extra).copied().collect();
            metric_value(&metrics, name, &labels).unwrap_or(0)
        };
        let opened = count("istio_tcp_connections_opened_total", &[]);
        let closed = count("istio_tcp_connections_closed_total", &[]);
        let failed = count("istio_tcp_connections_failed_total", &[]);
        let closed_denied = count(
            "istio_tcp_connections_closed_total",
            &["response_flags=\"DENY\""],
        );
        // a: allowed twice, refused once.
        if (opened, closed, failed, closed_denied) == (3, 3, 1, 1) {
            Ok(())
        } else {
            Err(format!(
                "{opened} opened, {closed} closed, {failed} failed, {closed_denied} closed DENY"
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_live_connection_is_closed_when_a_deny_arrives() {
    let mesh = Mesh::new(&PEERS());
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("c"),
        &["[::]:8080".parse().unwrap()],
    )
    .unwrap();
    let mut pipe =
        amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("a"), mesh.v4("c", APP_PORT)).unwrap();
    pipe.send_line("before").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("before")
    );
    let deny_a = "- name: deny-a\n  namespace: ns-c\n  scope: Namespace\n  action: Deny\n  rules: [{clauses: [{matches: [{principals: [cluster.local/ns/ns-a/sa/a]}]}]}]\n";
    mesh.update_config(&["deny-a"], |t| add_policy(t, deny_a));
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("closed"),
        "the open connection is closed by the new DENY"
    );
}

#[test]
fn plaintext_is_refused_under_strict_with_port_overrides() {
    let mesh = Mesh::new(&PEERS());
    let _apps = amesh_testbed::probe::serve(
        &mesh.probe,
        mesh.pod("c"),
        "c-app",
        &["[::]:8080".parse().unwrap(), "[::]:9090".parse().unwrap()],
    )
    .unwrap();
    let (p8080, p9090) = (mesh.v4("c", 8080), mesh.v4("c", 9090));
    assert_eq!(
        mesh.connect_one("d", p8080).served_by(),
        "c-app",
        "PERMISSIVE by default: plaintext from outside is accepted"
    );
    let strict = "peerAuthentications:\n- {name: strict, namespace: ns-c, scope: Namespace, mode: STRICT, portLevelMtls: {9090: PERMISSIVE}}\n";
    // Adds a dry-run policy too, so the reload can be observed (policies: 1).
    let dry = "policies:\n- {name: watch, namespace: ns-c, scope: Namespace, action: Deny, dryRun: true, rules: [{}]}\n";
    mesh.update_config(
        // In key order: the converted policy lives in the root namespace.
        &["converted_peer_authentication_strict_except_9090", "watch"],
        |t| format!("{t}{strict}{dry}"),
    );
    // STRICT refuses plaintext, in the name of the converted policy, as when the control
    // plane sends it.
    refused_because(&mesh, "d", p8080, "node2", STRICT_EXCEPT_9090);
    assert_eq!(
        mesh.connect_one("d", p9090).served_by(),
        "c-app",
        "port-level PERMISSIVE"
    );
    assert_eq!(
        mesh.connect_one("a", p8080).served_by(),
        "c-app",
        "mTLS from the mesh is unaffected"
    );
    // The dry-run DENY matched everything but enforced nothing; it was counted.
    let (_, metrics) = mesh
        .node("node2")
        .ztunnel
        .http("Metrics", "GET", "/metrics");
    assert!(
        metrics.contains("amesh_policy_dry_run_hits_total{policy=\"ns-c/watch\",action=\"DENY\"}"),
        "{metrics}"
    );
}

#[test]
fn a_policy_referenced_but_not_known_refuses() {
    let mesh = Mesh::new(&PEERS());
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    let uid_line = format!("- uid: {}\n", uid(mesh.spec("c")));
    let known = "- {name: other, namespace: ns-x, scope: Namespace, action: Deny, rules: [{}]}\n";
    mesh.update_config(&["other"], |t| {
        add_policy(
            t.replace(
                &uid_line,
                &format!("{uid_line}  authorizationPolicies: [ns-c/not-yet]\n"),
            ),
            known,
        )
    });
    // A missing referenced policy must not open a hole.
    refused_because(
        &mesh,
        "a",
        c,
        "node2",
        "ns-c/not-yet (referenced, not known)",
    );
    assert!(
        mesh.node("node2")
            .ztunnel
            .log()
            .contains("referenced but not known")
    );
    // Once it arrives (an ALLOW for a), it applies.
    let arrives = "- {name: not-yet, namespace: ns-c, scope: WorkloadSelector, action: Allow, rules: [{clauses: [{matches: [{principals: [\"*/sa/a\"]}]}]}]}\n";
    mesh.update_config(&["not-yet", "other"], |t| format!("{t}{arrives}"));
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");
    refused_because(&mesh, "b", c, "node2", "no ALLOW policy matched");
}
