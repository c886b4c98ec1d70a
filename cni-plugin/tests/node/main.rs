//! The node integration end to end, as a cluster runs it: per node the real `amesh-node`
//! agent chained into the node's CNI configuration, a ztunnel it serves over ZDS, and pods
//! created by a container runtime's CNI calls through Debian's `bridge` + `host-local`
//! plugins with `amesh-cni` last; the control plane and the agents read the same Kubernetes
//! YAML (or the Kubernetes API emulator). Needs root (CI runs as root).

mod api_client;
mod hostile;

use amesh_testbed::{
    Pod,
    cni::CniRuntime,
    cni::PodRef,
    kube_api::KubeApi,
    mesh::{APP_PORT, Mesh, PodSpec, pod},
    probe, require_root, sniff,
};
use std::{net::SocketAddr, time::Duration};

/// Starts the control plane and the agents with their ztunnels; waits until they are ready.
fn start(mesh: &mut Mesh) {
    mesh.try_start_control_plane().expect("control plane");
    mesh.try_start_agents().expect("agents");
}

fn wait_ready(mesh: &Mesh) {
    for (name, _) in mesh.ztunnels() {
        mesh.try_wait_ready(name).expect("ztunnel ready");
    }
}

/// One connection `from` → `to`, and what crossed the bridge meanwhile: Ok(true) when it went
/// as HBONE (segments to :15008, none to the app port, no plaintext), Ok(false) when it went
/// directly in plaintext.
fn hbone(mesh: &Mesh, from: &str, to: SocketAddr) -> Result<bool, String> {
    hbone_from(mesh, mesh.pod(from), to)
}

/// [`hbone`] from any pod of the bed.
fn hbone_from(mesh: &Mesh, from: &Pod, to: SocketAddr) -> Result<bool, String> {
    let sniffer = mesh.bed.sniff().map_err(|e| e.to_string())?;
    let connected = probe::connect(&mesh.probe, from, &["--timeout-ms", "5000"], &[to])
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.remove(0).outcome.map_err(|e| format!("{to}: {e}")));
    let segments = sniffer.stop();
    connected?;
    // Only this flow's segments: pooled HBONE connections to other pods keep talking.
    let to_hbone = segments
        .iter()
        .filter(|s| s.dst.ip() == to.ip() && s.dst.port() == 15008)
        .count();
    let to_app = segments.iter().filter(|s| s.dst == to).count();
    let plaintext = sniff::any_payload_contains(&segments, to.to_string().as_bytes());
    match (to_hbone > 0, to_app > 0 || plaintext) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        other => Err(format!("mixed traffic on the wire: {other:?}")),
    }
}

/// The pods (ZDS uids) `node`'s ztunnel serves, from its config dump.
fn served_pods(mesh: &Mesh, node: &str) -> Vec<String> {
    let (_, dump) = mesh
        .ztunnel(node)
        .try_http("Admin", "GET", "/config_dump")
        .expect("config dump");
    let v: serde_json::Value = serde_json::from_str(&dump).expect("config dump JSON");
    v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

/// The node agent's log on `node`.
fn agent_log(mesh: &Mesh, node: &str) -> String {
    mesh.agent_node(node)
        .agent
        .as_ref()
        .map(|a| a.log())
        .unwrap_or_default()
}

/// Tears the mesh down and checks nothing it made is left.
fn close(mesh: Mesh) {
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waits until `f` holds (a watched change propagating); panics naming `what` otherwise.
fn eventually(what: &str, f: impl FnMut() -> Result<(), String>) {
    amesh_testbed::eventually(what, Duration::from_secs(15), f).unwrap_or_else(|e| panic!("{e}"));
}

fn specs() -> Vec<PodSpec> {
    vec![
        pod("web", "web", "node1"),
        pod("cart", "shop", "node2"),
        pod("legacy", "outside", "node2"),
    ]
}

#[test]
fn the_cni_chain_enrolls_ambient_pods_and_del_releases_them() {
    require_root();
    let mut mesh = Mesh::try_build_for_cni(&specs(), &["web", "shop"]).expect("bed");
    start(&mut mesh);
    for node in ["node1", "node2"] {
        assert_eq!(
            mesh.agent_node(node).runtime.chain().expect("chain"),
            ["bridge", "amesh-cni"],
            "the agent chains the plugin last into {node}'s configuration"
        );
    }
    mesh.try_create_pods().expect("pods through the CNI chain");
    wait_ready(&mesh);
    mesh.try_wait_enrolled("node1", &["web/web"])
        .expect("node1");
    mesh.try_wait_enrolled("node2", &["shop/cart"])
        .expect("node2");
    assert_eq!(served_pods(&mesh, "node2"), ["uid-shop-cart"]);
    let _apps = mesh.try_apps(&["cart", "legacy"]).expect("apps");
    let cart = mesh.v4("cart", APP_PORT);
    eventually("web -> cart through the mesh", || {
        hbone(&mesh, "web", cart)?
            .then_some(())
            .ok_or("not HBONE".into())
    });
    // The pod outside the mesh was never enrolled; traffic to it leaves the mesh in plaintext.
    let legacy = mesh.v4("legacy", APP_PORT);
    assert_eq!(hbone(&mesh, "web", legacy), Ok(false));
    assert_eq!(
        mesh.try_connect_one("legacy", cart)
            .map(|c| c.served_by().to_string()),
        Ok("cart-app".to_string())
    );
    let cni_log = std::fs::read_to_string(mesh.agent_node("node2").dirs.state_dir.join("cni.log"))
        .unwrap_or_default();
    assert!(
        cni_log.contains("outside/legacy") && cni_log.contains("not in the mesh"),
        "the plugin logs its decisions to its file:\n{cni_log}"
    );
    // The runtime replaces web's sandbox (a new namespace, a new container), then repeats
    // the DEL of the old one: the new sandbox stays in the mesh.
    let old = mesh.pod_ref(mesh.spec("web"));
    let new = PodRef {
        container_id: format!("{}-second", old.container_id),
        ..old.clone()
    };
    let node1 = &mesh.agent_node("node1").runtime;
    let web2 = mesh
        .bed
        .add_pod_via_cni("web-second", node1, &new)
        .expect("bed")
        .expect("the new sandbox is enrolled");
    node1
        .del(&old, &mesh.pod("web").netns_path())
        .expect("DEL of the old sandbox");
    let state = mesh.agent_state("node1");
    assert_eq!(
        state["pods"]["web/web"]["container_id"],
        new.container_id.as_str(),
        "{state}"
    );
    eventually("the new sandbox through the mesh", || {
        hbone_from(&mesh, &web2, cart)?
            .then_some(())
            .ok_or("not HBONE".into())
    });
    // CHECK agrees with the state; DEL releases (and is idempotent).
    let node2 = &mesh.agent_node("node2").runtime;
    let cart_ref = mesh.pod_ref(mesh.spec("cart"));
    node2
        .check(&cart_ref, &mesh.pod("cart").netns_path())
        .expect("CHECK of an enrolled pod");
    mesh.try_cni_del("cart").expect("DEL");
    mesh.try_wait_enrolled("node2", &[]).expect("released");
    mesh.try_cni_del("cart").expect("a second DEL succeeds too");
    // Released: node2's ztunnel no longer serves cart.
    eventually("ztunnel stops serving cart", || {
        let served = served_pods(&mesh, "node2");
        (!served.contains(&"uid-shop-cart".to_string()))
            .then_some(())
            .ok_or(format!("{served:?}"))
    });
    // Uninstalling takes the plugin out of the chain and the bin dir, and leaves the rest.
    mesh.stop_agent("node2");
    let dirs = mesh.agent_node("node2").dirs.clone();
    let out = std::process::Command::new(probe::sibling_binary("amesh-node"))
        .args(["--cni-bin-dir", &dirs.bin_dir.display().to_string()])
        .args(["--cni-conf-dir", &dirs.conf_dir.display().to_string()])
        .args(["--state-dir", &dirs.state_dir.display().to_string()])
        .args([
            "--persistent-dir",
            &dirs.persistent_dir.display().to_string(),
        ])
        .arg("uninstall")
        .output()
        .expect("amesh-node uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mesh.agent_node("node2").runtime.chain().expect("chain"),
        ["bridge"]
    );
    assert!(!dirs.bin_dir.join("amesh-cni").exists());
    close(mesh);
}

#[test]
fn with_the_agent_down_ambient_pods_fail_and_others_start() {
    require_root();
    let specs = [pod("a", "shop", "node1"), pod("b", "outside", "node1")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &["shop"]).expect("bed");
    start(&mut mesh);
    mesh.stop_agent("node1");
    let refused = mesh
        .try_cni_add(&specs[0])
        .expect("bed")
        .expect_err("an ambient pod must not start without the agent");
    assert_eq!(refused.plugin, "amesh-cni");
    assert_eq!(refused.code, Some(100), "{refused}");
    assert!(refused.details.contains("shop"), "{refused}");
    let started = mesh.try_cni_add(&specs[1]).expect("bed");
    assert!(
        started.is_ok(),
        "a pod outside the mesh starts: {started:?}"
    );
    // Back up: the ambient pod starts, enrolled.
    mesh.restart_agent("node1").expect("agent");
    let a = mesh.try_cni_add(&specs[0]).expect("bed");
    assert!(a.is_ok(), "{a:?}");
    mesh.try_wait_enrolled("node1", &["shop/a"])
        .expect("enrolled");
    close(mesh);
}

#[test]
fn labels_enrol_and_release_running_pods_and_restarts_keep_traffic() {
    require_root();
    let specs = [pod("c", "web", "node1"), pod("s", "shop", "node2")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &[]).expect("bed");
    start(&mut mesh);
    mesh.try_create_pods().expect("pods");
    wait_ready(&mesh);
    // Both pods run (a process in each namespace) before anything is enrolled.
    let _apps = mesh.try_apps(&["c", "s"]).expect("apps");
    let s = mesh.v4("s", APP_PORT);
    assert_eq!(
        hbone(&mesh, "c", s),
        Ok(false),
        "plaintext before the label"
    );
    mesh.try_wait_enrolled("node1", &[])
        .expect("nothing enrolled");

    mesh.set_ambient("web", true).expect("label");
    mesh.set_ambient("shop", true).expect("label");
    mesh.try_wait_enrolled("node1", &["web/c"])
        .expect("c enrolled");
    mesh.try_wait_enrolled("node2", &["shop/s"])
        .expect("s enrolled");
    eventually("c -> s through the mesh", || {
        hbone(&mesh, "c", s)?.then_some(()).ok_or_else(|| {
            let (_, dump) = mesh
                .ztunnel("node1")
                .try_http("Admin", "GET", "/config_dump")
                .unwrap_or_default();
            format!(
                "not HBONE; node1's ztunnel: {dump}\nagent: {}\nztunnel log: {}",
                mesh.agent_state("node1"),
                mesh.ztunnel("node1").log()
            )
        })
    });

    // A long-lived connection survives both agents restarting; the state is adopted.
    let echo_at = mesh.v4("s", 9090);
    let _echo = probe::serve_echo(&mesh.probe, mesh.pod("s"), &[echo_at]).expect("echo");
    let mut pipe = probe::pipe(&mesh.probe, mesh.pod("c"), echo_at).expect("pipe");
    let echo = |pipe: &mut amesh_testbed::PodProcess, line: &str| {
        pipe.send_line(line).expect("send");
        pipe.next_line(Duration::from_secs(10))
    };
    assert!(echo(&mut pipe, "before").is_some_and(|l| l.contains("before")));
    mesh.restart_agent("node1").expect("restart node1");
    mesh.restart_agent("node2").expect("restart node2");
    mesh.try_wait_enrolled("node1", &["web/c"])
        .expect("still enrolled");
    mesh.try_wait_enrolled("node2", &["shop/s"])
        .expect("still enrolled");
    assert!(
        echo(&mut pipe, "after").is_some_and(|l| l.contains("after")),
        "the connection carried on through the agents' restarts"
    );
    let log = agent_log(&mesh, "node2");
    assert!(log.contains("adopted=true"), "{log}");
    assert_eq!(
        hbone(&mesh, "c", s),
        Ok(true),
        "new connections still go through the mesh"
    );

    // Someone rewrites the node's CNI configuration without amesh: it is chained again.
    let runtime: &CniRuntime = &mesh.agent_node("node1").runtime;
    let (file, mut list) = runtime.primary().expect("primary");
    list["plugins"]
        .as_array_mut()
        .expect("plugins")
        .retain(|p| p["type"] != "amesh-cni");
    std::fs::write(&file, list.to_string()).expect("rewrite");
    eventually("the plugin chained again", || {
        let chain = runtime.chain()?;
        (chain == ["bridge", "amesh-cni"])
            .then_some(())
            .ok_or(format!("{chain:?}"))
    });

    // Unlabel shop: s is released, c still in the mesh reaches it in plaintext.
    mesh.set_ambient("shop", false).expect("unlabel");
    mesh.try_wait_enrolled("node2", &[]).expect("s released");
    eventually("c -> s leaves the mesh", || match hbone(&mesh, "c", s)? {
        false => Ok(()),
        true => Err("still HBONE".into()),
    });
    drop(pipe);
    close(mesh);
}

#[test]
fn a_bad_zds_peer_or_cni_request_harms_nobody_else() {
    require_root();
    let specs = [pod("c", "web", "node1"), pod("s", "web", "node1")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &["web"]).expect("bed");
    start(&mut mesh);
    mesh.try_create_pods().expect("pods");
    wait_ready(&mesh);
    mesh.try_wait_enrolled("node1", &["web/c", "web/s"])
        .expect("enrolled");
    let _apps = mesh.try_apps(&["s"]).expect("apps");
    let s = mesh.v4("s", APP_PORT);
    // Served once both pods have their certificates.
    eventually("c -> s through the mesh", || {
        hbone(&mesh, "c", s)?
            .then_some(())
            .ok_or("not HBONE".into())
    });

    let dirs = mesh.agent_node("node1").dirs.clone();
    // A peer that does not speak ZDS is closed.
    let peer = amesh_sys::seqpacket::connect(&dirs.zds_socket).expect("connect");
    use std::os::fd::AsFd;
    amesh_sys::seqpacket::send(peer.as_fd(), b"\xff\xffnot zds", &[]).expect("send");
    let mut buf = [0u8; 64];
    let closed = amesh_testbed::eventually("the bad peer closed", Duration::from_secs(10), || {
        match amesh_sys::seqpacket::recv(peer.as_fd(), &mut buf) {
            Ok(None) => Ok(Ok(())),
            Ok(Some(got)) => Ok(Err(format!("the agent answered with {} bytes", got.len))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            Err(e) => Ok(Err(format!("the bad peer was not closed: {e}"))),
        }
    });
    closed
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    // Garbage on the CNI socket gets a reply naming the problem and closes only that call.
    use std::io::{BufRead, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(&dirs.cni_socket).expect("connect");
    conn.write_all(b"{\"command\": \"explode\"}\n")
        .expect("send");
    let mut reply = String::new();
    std::io::BufReader::new(&conn)
        .read_line(&mut reply)
        .expect("reply");
    assert!(
        reply.contains("failed") && reply.contains("malformed"),
        "{reply}"
    );
    // The served ztunnel and the agent carry on.
    assert_eq!(hbone(&mesh, "c", s), Ok(true), "still served");
    mesh.try_cni_del("c").expect("DEL");
    mesh.try_wait_enrolled("node1", &["web/s"])
        .expect("the agent still serves CNI");
    let log = agent_log(&mesh, "node1");
    assert!(log.contains("refusing a ZDS peer"), "{log}");
    close(mesh);
}

#[test]
fn from_the_kubernetes_api_pods_are_enrolled_annotated_and_released() {
    require_root();
    let api = KubeApi::start().expect("emulator");
    let specs = [pod("c", "web", "node1"), pod("other", "web", "node2")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &["web"]).expect("bed");
    let url = api.url();
    mesh.agent_source = vec!["--kube-url".into(), url.clone()];
    mesh.control_plane_source = vec!["--kube-url".into(), url];
    // The cluster's objects, as kubectl would apply them; a pod already there only gets its
    // new status (as the kubelet reports it), keeping what others (the agent) marked on it.
    let apply_source = |mesh: &Mesh| {
        for file in ["namespaces.yaml", "pods.yaml"] {
            let text = std::fs::read_to_string(mesh.source_dir().join(file)).expect("source");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let mut object: serde_json::Value =
                    serde::Deserialize::deserialize(doc).expect("yaml");
                if object.is_null() {
                    continue;
                }
                let existing = api.objects("/api/v1/pods").into_iter().find(|p| {
                    object["kind"] == "Pod" && p["metadata"]["name"] == object["metadata"]["name"]
                });
                if let Some(mut existing) = existing {
                    existing["status"] = object["status"].take();
                    object = existing;
                }
                api.apply(object).expect("apply");
            }
        }
    };
    apply_source(&mesh);
    // The kubelet passes the UID the API server assigned.
    for p in api.objects("/api/v1/pods") {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = p["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        mesh.pod_uids.insert(name, uid);
    }
    start(&mut mesh);
    mesh.try_create_pods().expect("pods");
    apply_source(&mesh);
    wait_ready(&mesh);
    mesh.try_wait_enrolled("node1", &["web/c"])
        .expect("enrolled");
    // The control plane published its root where ztunnel's DaemonSet mounts it from.
    let root = std::fs::read_to_string(mesh.ca_root_path()).expect("root");
    let published = api
        .objects("/api/v1/configmaps")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "istio-ca-root-cert")
        .expect("istio-ca-root-cert");
    assert_eq!(published["metadata"]["namespace"], "istio-system");
    assert_eq!(published["data"]["root-cert.pem"], root.as_str());
    // The node1 agent watches only its own node's pods.
    mesh.try_wait_enrolled("node2", &["web/other"])
        .expect("enrolled");
    let annotation = |name: &str| {
        api.objects("/api/v1/pods")
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
            .map(|p| p["metadata"]["annotations"]["ambient.istio.io/redirection"].clone())
            .unwrap_or_default()
    };
    eventually("c annotated", || {
        (annotation("c") == "enabled").then_some(()).ok_or(format!(
            "{}\n{}",
            annotation("c"),
            agent_log(&mesh, "node1")
        ))
    });
    // Someone strips the mark: the agent puts it back (the pod is still enrolled).
    let mut c = api
        .objects("/api/v1/pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "c")
        .expect("c");
    c["metadata"]["annotations"] = serde_json::json!({});
    api.apply(c).expect("strip the mark");
    eventually("the mark repaired", || {
        (annotation("c") == "enabled")
            .then_some(())
            .ok_or(format!("{}", annotation("c")))
    });
    // Opting the pod out by label releases it and clears the mark.
    let mut c = api
        .objects("/api/v1/pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "c")
        .expect("c");
    c["metadata"]["labels"]["istio.io/dataplane-mode"] = "none".into();
    api.apply(c).expect("relabel");
    mesh.try_wait_enrolled("node1", &[]).expect("released");
    eventually("mark cleared", || {
        annotation("c")
            .is_null()
            .then_some(())
            .ok_or(format!("{}", annotation("c")))
    });
    // With the agent down, the plugin asks the API itself: a pod that opts in on its own in
    // a namespace the agent never saw as ambient does not start; its neighbour does.
    mesh.stop_agent("node1");
    api.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "plain"}}))
        .expect("namespace");
    for (name, labels) in [
        (
            "optin",
            serde_json::json!({"istio.io/dataplane-mode": "ambient"}),
        ),
        ("neighbour", serde_json::json!({})),
    ] {
        api.apply(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "plain", "labels": labels},
            "spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "app"}]}}))
            .expect("pod");
    }
    let optin = pod("optin", "plain", "node1");
    let refused = match mesh.try_cni_add(&optin).expect("bed") {
        Err(refused) => refused,
        Ok(_) => panic!(
            "a pod the API puts in the mesh must not start without the agent: {}",
            std::fs::read_to_string(mesh.agent_node("node1").dirs.state_dir.join("cni.log"))
                .unwrap_or_default()
        ),
    };
    assert_eq!(refused.code, Some(100), "{refused}");
    assert!(refused.details.contains("Kubernetes API puts"), "{refused}");
    let neighbour = pod("neighbour", "plain", "node1");
    let started = mesh.try_cni_add(&neighbour).expect("bed");
    assert!(started.is_ok(), "{started:?}");
    close(mesh);
}

#[test]
fn bad_cni_input_gets_an_error_object() {
    let plugin = probe::sibling_binary("amesh-cni");
    let call = |command: &str, stdin: &str| {
        let mut child = std::process::Command::new(&plugin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/run/netns/none")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=x")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("amesh-cni");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        // Nothing (DEL) or exactly one JSON object: the plugin writes nothing else there.
        let v: serde_json::Value = if out.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
        };
        (out.status.success(), v)
    };
    let log = std::env::temp_dir().join(format!("amesh-cni-test-{}.log", std::process::id()));
    // Removed however the test ends.
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(log.clone());
    let conf = |extra: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"amesh-cni","log_file":"{}","agent_socket":"/nonexistent.sock","timeout_ms":100{extra}}}"#,
            log.display()
        )
    };
    for (stdin, code) in [
        ("{garbage", 6),
        (r#"{"cniVersion":"7.0.0","type":"amesh-cni"}"#, 1),
        (r#"{"type":"amesh-cni"}"#, 7),
        (r#"{"cniVersion":1,"type":"amesh-cni"}"#, 7),
        (conf("").as_str(), 7), // ADD without prevResult: not chained
    ] {
        let (ok, v) = call("ADD", stdin);
        assert!(!ok, "{stdin} must fail");
        assert_eq!(v["code"], code, "{stdin}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // A number is the wrong type, not a missing field.
    let (_, v) = call("ADD", r#"{"cniVersion":1,"type":"amesh-cni"}"#);
    assert!(
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains("cniVersion is not a version string")),
        "{v}"
    );
    let (ok, v) = call("VERSION", "{}");
    assert!(ok);
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    let (ok, _) = call("DEL", &conf(""));
    assert!(ok, "DEL never fails a teardown");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("command=DEL"),
        "the plugin logs to its file: {logged}"
    );
}

#[test]
fn without_ztunnel_ambient_pods_do_not_start() {
    require_root();
    let specs = [pod("a", "shop", "node1"), pod("b", "outside", "node1")];
    let mut mesh = Mesh::try_build_for_cni(&specs, &["shop"]).expect("bed");
    start(&mut mesh);
    wait_ready(&mesh);
    // ztunnel goes away between requests: the agent notices without being asked.
    let node = &mut mesh.agent_nodes[0];
    node.ztunnel.stop();
    eventually("the agent notices", || {
        agent_log(&mesh, "node1")
            .contains("ztunnel disconnected")
            .then_some(())
            .ok_or_else(|| agent_log(&mesh, "node1"))
    });
    let refused = mesh
        .try_cni_add(&specs[0])
        .expect("bed")
        .expect_err("an ambient pod must not start while no ztunnel serves the node");
    assert_eq!(refused.code, Some(101), "{refused}");
    assert!(refused.details.contains("not connected"), "{refused}");
    let started = mesh.try_cni_add(&specs[1]).expect("bed");
    assert!(
        started.is_ok(),
        "a pod outside the mesh starts: {started:?}"
    );
    close(mesh);
}
