//! The node agent under hostile or careless input, through the real binaries: bad files in
//! the source directory it watches, and a CNI ADD whose `CNI_NETNS` is a FIFO.

use super::*;
use serde_json::json;

/// Files that are not usable YAML, each with the reason the agent must give for it.
fn plant_bad_files(dir: &std::path::Path) -> Vec<(&'static str, &'static str)> {
    std::fs::write(dir.join("open-flow.yaml"), "a: [").expect("write");
    std::fs::write(dir.join("braces.yaml"), "{{{{").expect("write");
    std::fs::write(dir.join("latin1.yaml"), b"kind: caf\xe9\n").expect("write");
    std::fs::write(dir.join("deep.yaml"), "{a: ".repeat(25_000)).expect("write");
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.yaml"))
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    vec![
        ("open-flow.yaml", "did not find expected node content"),
        ("braces.yaml", "did not find expected node content"),
        ("latin1.yaml", "not UTF-8"),
        ("deep.yaml", "nested deeper than 100"),
        ("pipe.yaml", "is a FIFO, not a regular file"),
    ]
}

#[test]
fn bad_source_files_are_named_once_and_label_changes_still_apply() {
    require_root();
    let specs = [pod("c", "web", "node1")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &[]).expect("bed");
    let bad = plant_bad_files(&mesh.source_dir());
    // Before the fix the agents and the control plane looped on these before serving.
    start(&mut mesh);
    mesh.try_create_pods()
        .expect("pods start beside bad source files");
    wait_ready(&mesh);
    mesh.try_wait_enrolled("node1", &[])
        .expect("nothing enrolled yet");

    // The FIFO goes and a label flips: the change applies.
    std::fs::remove_file(mesh.source_dir().join("pipe.yaml")).expect("remove the FIFO");
    mesh.set_ambient("web", true).expect("label");
    mesh.try_wait_enrolled("node1", &["web/c"])
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent_log(&mesh, "node1")));

    let log = agent_log(&mesh, "node1");
    for (file, reason) in bad {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(file)).collect();
        assert_eq!(lines.len(), 1, "{file} is reported exactly once:\n{log}");
        assert!(
            lines[0].contains("file skipped") && lines[0].contains(reason),
            "{file}: {}",
            lines[0]
        );
    }
    close(mesh);
}

#[test]
fn an_add_whose_netns_is_a_fifo_fails_alone_and_other_calls_go_on() {
    require_root();
    let specs = [pod("c", "web", "node1"), pod("s", "web", "node1")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &["web"]).expect("bed");
    start(&mut mesh);
    mesh.try_create_pods().expect("pods");
    wait_ready(&mesh);
    mesh.try_wait_enrolled("node1", &["web/c", "web/s"])
        .expect("enrolled");

    // The runtime hands amesh-cni a FIFO as the pod's namespace. Nobody ever writes to it:
    // a blocking open would wedge the agent while it holds the lock every CNI call takes.
    let fifo = mesh.agent_node("node1").dirs.state_dir.join("netns-fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    let runtime = &mesh.agent_node("node1").runtime;
    let (_, list) = runtime.primary().expect("primary");
    let entry = list["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "amesh-cni"))
        .cloned()
        .expect("amesh-cni is chained");
    // What a runtime adds to each plugin of a list.
    let mut entry = entry;
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    let mut pod_ref = mesh.pod_ref(mesh.spec("c"));
    pod_ref.container_id = format!("{}-fifo", pod_ref.container_id);
    let ip = mesh.pod("c").ipv4();
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": format!("{ip}/24")}]});
    let refused = runtime
        .invoke(&entry, "ADD", &pod_ref, &fifo, "eth0", Some(&prev))
        .expect_err("a FIFO is no network namespace");
    let _ = std::fs::remove_file(&fifo);
    assert!(
        format!("{} {}", refused.msg, refused.details).contains("is not a network namespace"),
        "{refused:?}"
    );

    // Every other call on the node still gets its answer.
    let s = mesh.pod_ref(mesh.spec("s"));
    runtime
        .check(&s, &mesh.pod("s").netns_path())
        .expect("CHECK of another pod answers");
    mesh.try_cni_del("s").expect("DEL of another pod answers");
    close(mesh);
}
