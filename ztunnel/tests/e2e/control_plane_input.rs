//! The control plane under hostile or careless input, through the real binaries:
//! - files that are not YAML, not UTF-8, not regular files, or nested past the limit sit in
//!   the watched directory from the start. The control plane starts anyway, names each such
//!   file once, keeps serving certificates and xDS, and keeps applying good changes; a broken
//!   edit of a policy file keeps the policy in force;
//! - clients that open connections and never finish a TLS handshake hold a bounded number of
//!   slots; the port keeps serving the mesh.

use crate::support::*;
use crate::xds::{policy_names, wait_dump, workload_names};
use std::path::Path;

const DENY_NS_A: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-ns-a, namespace: ns-c}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [ns-a]}}]}]\n";

/// The bad files, each with the reason the control plane must give for it.
fn plant_bad_files(dir: &Path) -> Vec<(&'static str, &'static str)> {
    std::fs::write(dir.join("open-flow.yaml"), "a: [").unwrap();
    std::fs::write(dir.join("tab.yaml"), "a:\n\tb: 1\n").unwrap();
    std::fs::write(dir.join("nul.yaml"), b"a: \0\n").unwrap();
    std::fs::write(dir.join("latin1.yaml"), b"kind: caf\xe9\n").unwrap();
    std::fs::write(dir.join("deep.yaml"), "{a: ".repeat(25_000)).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    vec![
        ("open-flow.yaml", "did not find expected node content"),
        ("tab.yaml", "cannot start any token"),
        ("nul.yaml", "control characters are not allowed"),
        ("latin1.yaml", "not UTF-8"),
        ("deep.yaml", "nested deeper than 100"),
        ("pipe.yaml", "is a FIFO, not a regular file"),
    ]
}

#[test]
fn bad_files_in_the_source_are_named_once_and_the_rest_keeps_applying() {
    amesh_testbed::require_root();
    let specs = [pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    let source = mesh.source_path().parent().unwrap().to_path_buf();
    let bad = plant_bad_files(&source);
    // Before the fix the control plane looped on the first of these before serving anything.
    mesh.try_start_control_plane()
        .expect("the control plane starts beside bad files");
    mesh.try_start(&[]).expect("start the nodes");
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)
            .expect("ready: certificates and xDS are served");
        wait_dump(&mesh, node, "both pods", |v| {
            workload_names(v) == ["a", "c"]
        });
    }
    let _apps = mesh.apps(&["c"]);
    let c = mesh.v4("c", APP_PORT);
    assert_eq!(mesh.connect_one("a", c).served_by(), "c-app");

    // A good change still applies while the bad files sit there; the FIFO may even go.
    std::fs::remove_file(source.join("pipe.yaml")).unwrap();
    std::fs::write(source.join("deny.yaml"), DENY_NS_A).unwrap();
    for node in ["node1", "node2"] {
        wait_dump(&mesh, node, "the new policy", |v| {
            policy_names(v).iter().any(|n| n.contains("deny-ns-a"))
        });
    }
    // The DENY policy is enforced.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");

    // A typo in the policy's file keeps the policy in force (its last good version stays).
    std::fs::write(
        source.join("deny.yaml"),
        DENY_NS_A.replace("rules: [{", "rules: [[{"),
    )
    .unwrap();
    // A later good change proves the broken edit was read and passed over.
    std::fs::write(
        source.join("extra.yaml"),
        DENY_NS_A
            .replace("deny-ns-a", "deny-marker")
            .replace("ns-a]", "ns-none]"),
    )
    .unwrap();
    wait_dump(
        &mesh,
        "node2",
        "the marker policy beside the kept one",
        |v| {
            let names = policy_names(v);
            names.iter().any(|n| n.contains("deny-marker"))
                && names.iter().any(|n| n.contains("deny-ns-a"))
        },
    );
    // The kept DENY policy is still enforced.
    refused_because(&mesh, "a", c, "node2", "denied by ns-c/deny-ns-a");

    let cp = mesh.control_plane.as_ref().expect("control plane").log();
    for (file, reason) in bad {
        let lines: Vec<&str> = cp.lines().filter(|l| l.contains(file)).collect();
        assert_eq!(lines.len(), 1, "{file} is reported exactly once:\n{cp}");
        assert!(
            lines[0].contains("file skipped")
                && lines[0].contains(reason)
                && lines[0].contains("line="),
            "{file}: {}",
            lines[0]
        );
    }
    let kept: Vec<&str> = cp.lines().filter(|l| l.contains("deny.yaml")).collect();
    assert!(
        kept.len() == 1 && kept[0].contains("its last good version stays"),
        "the broken edit is reported once, as kept:\n{cp}"
    );
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn handshakes_past_the_cap_are_closed_at_once_and_the_port_keeps_serving() {
    use std::io::Read;
    use std::time::Duration;
    amesh_testbed::require_root();
    let specs = [pod("a", "ns-a", "node1")];
    let mut mesh = Mesh::try_build(&specs).expect("build the mesh");
    mesh.control_plane_source
        .extend(["--max-handshakes".into(), "2".into()]);
    let xds = mesh.try_start_control_plane().expect("control plane");
    // Two clients open connections and never say a word: they hold both handshake slots
    // until the 10 s handshake timeout.
    let stuck: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(xds).expect("connect"))
        .collect();
    let cp_log = |mesh: &Mesh| mesh.control_plane.as_ref().expect("control plane").log();
    // Each extra connection is closed at once (well before the handshake timeout).
    let mut closed = 0;
    for _ in 0..5 {
        let mut extra = std::net::TcpStream::connect(xds).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        match extra.read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            other => panic!(
                "an extra connection was not closed at once: {other:?}\n{}",
                cp_log(&mesh)
            ),
        }
    }
    assert_eq!(closed, 5);
    let log = cp_log(&mesh);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too many TLS handshakes in progress"))
        .collect();
    // Rate-limited: five refusals, one line.
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("max_handshakes=2"), "{}", refusals[0]);

    // Once the silent clients go, a real ztunnel gets its certificates and configuration.
    drop(stuck);
    mesh.try_start(&[]).expect("start the node");
    mesh.try_wait_ready("node1")
        .unwrap_or_else(|e| panic!("{e}\n{}", cp_log(&mesh)));
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
