//! `amesh-demo --hold` as a script would drive it: wait for `target/amesh-demo/mesh.json`,
//! reach the mesh through what it says, drop a policy into `config_dir` and see it take
//! effect, then Ctrl-C and find nothing left behind. Needs root (CI runs as root).

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Option<Value>) -> Value {
    amesh_testbed::eventually(what, limit, || f().ok_or("not yet"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send");
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    out
}

/// Objects named with `prefix` that still exist: namespaces, bpffs pins, cgroups, files.
fn leftovers(prefix: &str, cgroup: &Path) -> Vec<PathBuf> {
    let mut left: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    for p in [
        PathBuf::from("/sys/fs/bpf").join(prefix),
        std::env::temp_dir().join(prefix),
        cgroup.to_path_buf(),
    ] {
        if p.exists() {
            left.push(p);
        }
    }
    left
}

#[test]
fn hold_describes_a_live_mesh_and_ctrl_c_removes_it() {
    amesh_testbed::require_root();
    let cwd = std::env::temp_dir().join(format!("amesh-demo-hold-test-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).expect("cwd");
    let mut demo = Held(
        Command::new(env!("CARGO_BIN_EXE_amesh-demo"))
            .arg("--hold")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("amesh-demo"),
        cwd.clone(),
    );
    let json = cwd.join("target/amesh-demo/mesh.json");
    let mesh = wait_for("mesh.json", Duration::from_secs(120), || {
        serde_json::from_slice(&std::fs::read(&json).ok()?).ok()
    });
    let prefix = mesh["prefix"].as_str().expect("prefix").to_string();
    let cgroup = PathBuf::from(mesh["underlay"]["cgroup"].as_str().expect("cgroup"));
    assert!(
        Path::new("/run/netns")
            .join(mesh["underlay"]["netns"].as_str().expect("netns"))
            .exists()
    );
    let pods = mesh["pods"].as_array().expect("pods");
    assert_eq!(
        pods.len(),
        5,
        "web, cart-0, cart-1, legacy and the waypoint's pod"
    );
    // The waypoint stays up with `shop` bound to it, and says where to reach it.
    let waypoints = mesh["waypoints"].as_array().expect("waypoints");
    assert_eq!(waypoints.len(), 1, "{waypoints:?}");
    let w = &waypoints[0];
    assert_eq!(
        (w["gateway"].as_str(), w["namespace"].as_str()),
        (Some("waypoint"), Some("shop"))
    );
    assert!(
        Path::new("/run/netns")
            .join(w["netns"].as_str().expect("netns"))
            .exists()
    );
    let waypoint_metrics = http_get(w["metrics"].as_str().expect("metrics"), "/metrics");
    assert!(
        waypoint_metrics.contains("istio_requests_total{reporter=\"waypoint\""),
        "{waypoint_metrics}"
    );
    let enrolled: Vec<&str> = pods
        .iter()
        .filter(|p| p["enrolled"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(enrolled, ["web", "cart-0", "cart-1"]);
    for p in pods {
        let netns = p["netns"].as_str().expect("netns");
        assert!(netns.starts_with(&prefix), "{netns}");
        assert!(Path::new("/run/netns").join(netns).exists());
    }
    // A request from web to cart-1 through the pod's exec prefix: answered, through the mesh
    // (node2's count of web's mutual-TLS connections goes up by it).
    let node2 = &mesh["nodes"][1]["ztunnel"];
    let mtls_from_web = || {
        let metrics = http_get(node2["metrics"].as_str().expect("metrics"), "/metrics");
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_opened_total")
                    && l.contains("source_workload=\"web\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = mtls_from_web();
    let web = &pods[0];
    let cart1 = pods.iter().find(|p| p["name"] == "cart-1").expect("cart-1");
    let exec = web["exec"].as_str().expect("exec");
    let url = format!("http://{}:8080/", cart1["ip"].as_str().expect("ip"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{exec} curl -s -m 5 {url}"))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("served-by=cart-1-app"), "{body}");
    wait_for(
        "the request counted as mutual TLS",
        Duration::from_secs(10),
        || (mtls_from_web() > before).then_some(Value::Null),
    );
    // A policy dropped into config_dir reaches the ztunnels.
    let config_dir = PathBuf::from(mesh["controlplane"]["config_dir"].as_str().expect("dir"));
    std::fs::write(
        config_dir.join("allow-nothing.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: shop}\nspec: {action: ALLOW}\n",
    )
    .expect("policy");
    let admin = mesh["nodes"][0]["ztunnel"]["admin"]
        .as_str()
        .expect("admin")
        .to_string();
    wait_for(
        "the policy in node1's ztunnel",
        Duration::from_secs(15),
        || {
            http_get(&admin, "/config_dump")
                .contains("allow-nothing")
                .then_some(Value::Null)
        },
    );
    // Ctrl-C: every process and object goes.
    let pids: Vec<u64> = std::iter::once(mesh["controlplane"]["pid"].as_u64())
        .chain(
            mesh["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|n| [n["ztunnel"]["pid"].as_u64(), n["agent"]["pid"].as_u64()]),
        )
        .flatten()
        .collect();
    assert_eq!(pids.len(), 5);
    let status = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    amesh_testbed::eventually(
        "the demo stopping on Ctrl-C",
        Duration::from_secs(30),
        || match demo.0.try_wait().expect("wait") {
            Some(_) => Ok(()),
            None => Err("still running"),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs"
        );
    }
    assert_eq!(leftovers(&prefix, &cgroup), Vec::<PathBuf>::new());
    assert!(!json.exists(), "mesh.json removed");
}

/// The held demo: stopped (Ctrl-C, then kill) and its directory removed however the test
/// ends, so a failing assertion does not leave a mesh running.
struct Held(std::process::Child, PathBuf);

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            // Whether or not it stopped in time, it is killed and reaped below.
            let _ = amesh_testbed::eventually("the demo stopping", Duration::from_secs(20), || {
                match self.0.try_wait() {
                    Ok(None) => Err("still running"),
                    _ => Ok(()),
                }
            });
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}
