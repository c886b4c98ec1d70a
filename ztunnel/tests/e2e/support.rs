//! A small mesh for ztunnel's end-to-end tests: pods in network namespaces on one underlay,
//! grouped into "nodes", each node with its own capture programs, a fake node agent speaking
//! ZDS, and a real `ztunnel` process. Workloads and services come from the local file.

use amesh_ebpf_loader::{Capture, CaptureConfig, EnrollRequest};
use amesh_testbed::{Pod, PodProcess, TestBed, probe, probe::Connected, zds_agent::FakeAgent};
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

pub const APP_PORT: u16 = 8080;
pub const VIP: &str = "10.96.0.10";

/// One pod of the test mesh.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    /// The node it runs on; `None`: not in the mesh (not enrolled, not in the config).
    pub node: Option<&'static str>,
    /// In the config as a plain-TCP workload (not enrolled).
    pub tcp: bool,
    pub healthy: bool,
    /// Backs the service at `VIP:80` (→ 8080).
    pub in_service: bool,
    /// What the node agent says the pod's service account is, when it differs from the
    /// configuration (to test identity mismatches).
    pub zds_service_account: Option<&'static str>,
}

pub const fn pod(name: &'static str, namespace: &'static str, node: &'static str) -> PodSpec {
    PodSpec {
        name,
        namespace,
        service_account: name,
        node: Some(node),
        tcp: false,
        healthy: true,
        in_service: false,
        zds_service_account: None,
    }
}

pub const fn outside(name: &'static str) -> PodSpec {
    PodSpec {
        name,
        namespace: "outside",
        service_account: "default",
        node: None,
        tcp: false,
        healthy: true,
        in_service: false,
        zds_service_account: None,
    }
}

pub struct Node {
    pub name: &'static str,
    pub ztunnel: ZtunnelProcess,
    pub agent: FakeAgent,
    pub capture: Capture,
}

/// A ztunnel process, killed when dropped.
pub struct ZtunnelProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for ZtunnelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ZtunnelProcess {
    /// What it logged so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address an endpoint (`Admin`, `Readiness`, `Metrics`) bound, from the log.
    pub fn endpoint(&self, role: &str) -> SocketAddr {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            for line in self.log().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let f = &v["fields"];
                if f["message"] == "listening" && f["endpoint"] == role {
                    return f["address"].as_str().unwrap().parse().unwrap();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ztunnel never logged its {role} address: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `METHOD path` against one of its endpoints: (status, body).
    pub fn http(&self, role: &str, method: &str, path: &str) -> (u16, String) {
        http_raw(
            self.endpoint(role),
            format!("{method} {path} HTTP/1.1\r\nHost: ztunnel\r\n\r\n").as_bytes(),
        )
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Sends raw bytes to an HTTP endpoint on loopback; (status, body) of the answer.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(request).unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub struct Mesh {
    pub nodes: Vec<Node>,
    pub specs: Vec<PodSpec>,
    pub pods: Vec<Pod>,
    pub dir: PathBuf,
    pub probe: PathBuf,
    pub bed: TestBed,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Mesh {
    pub fn new(specs: &[PodSpec]) -> Self {
        Self::with_args(specs, &[])
    }

    /// A mesh whose ztunnels get extra arguments, per node (`(node, args)`).
    pub fn with_args(specs: &[PodSpec], extra: &[(&str, &[&str])]) -> Self {
        amesh_testbed::require_root();
        let bed = TestBed::new().expect("test bed");
        let pods: Vec<Pod> = specs
            .iter()
            .map(|s| bed.add_pod(s.name).expect("pod"))
            .collect();
        let dir = std::env::temp_dir().join(bed.prefix());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, config_yaml(specs, &pods)).expect("config");
        let mut node_names: Vec<&'static str> = specs.iter().filter_map(|s| s.node).collect();
        node_names.sort();
        node_names.dedup();
        let mut mesh = Self {
            nodes: Vec::new(),
            specs: specs.to_vec(),
            pods,
            dir,
            probe: probe::sibling_binary("amesh-probe"),
            bed,
        };
        for name in node_names {
            let args = extra
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |(_, a)| *a);
            let node = mesh.start_node(name, &config, args);
            mesh.nodes.push(node);
        }
        mesh
    }

    fn start_node(&self, name: &'static str, config: &Path, args: &[&str]) -> Node {
        let pin_root = self.bed.pin_root().join(name);
        let mut capture = Capture::load_or_adopt(&CaptureConfig {
            pin_root: pin_root.clone(),
            cgroup: self.bed.cgroup_path().to_path_buf(),
            debug_logs: false,
        })
        .expect("capture");
        let members: Vec<usize> = (0..self.specs.len())
            .filter(|&i| self.specs[i].node == Some(name) && !self.specs[i].tcp)
            .collect();
        for &i in &members {
            let (path, addrs) = (self.pods[i].netns_path(), self.pods[i].addresses());
            let req = EnrollRequest {
                netns: &path,
                addresses: &addrs,
                excluded_outbound_ports: &[],
                excluded_inbound_ports: &[],
                bypass_inbound: false,
                listeners: None,
            };
            capture.enroll(&req).expect("enroll");
        }
        let mut agent =
            FakeAgent::listen(&self.dir.join(format!("{name}.sock"))).expect("agent socket");
        let ztunnel = self.spawn_ztunnel(name, config, &pin_root, args);
        assert_eq!(
            agent.accept().expect("ztunnel connects"),
            1,
            "ZDS hello announces V1"
        );
        for &i in &members {
            let s = &self.specs[i];
            let sa = s.zds_service_account.unwrap_or(s.service_account);
            let answer = agent
                .add(
                    &uid(s),
                    s.name,
                    s.namespace,
                    sa,
                    self.pods[i].netns().as_fd(),
                )
                .expect("add");
            assert_eq!(answer, Ok(()), "ztunnel accepted pod {}", s.name);
        }
        assert_eq!(agent.snapshot_sent().expect("snapshot"), Ok(()));
        Node {
            name,
            ztunnel,
            agent,
            capture,
        }
    }

    pub fn spawn_ztunnel(
        &self,
        node: &str,
        config: &Path,
        pins: &Path,
        extra: &[&str],
    ) -> ZtunnelProcess {
        let log = self
            .dir
            .join(format!("ztunnel-{node}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .args(["--config", &config.display().to_string(), "--node", node])
            .args([
                "--zds-socket",
                &self.dir.join(format!("{node}.sock")).display().to_string(),
            ])
            .args(["--capture-pins", &pins.display().to_string()])
            .args(["--ca-dir", &self.dir.join("ca").display().to_string()])
            .args([
                "--log-format",
                "json",
                "--admin",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--readiness",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start ztunnel");
        ZtunnelProcess { child, log }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        let i = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .expect("pod by name");
        &self.pods[i]
    }

    pub fn spec(&self, name: &str) -> &PodSpec {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .expect("spec by name")
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    /// Starts each named pod's app on 8080 (answers with `served-by=<pod>-app`).
    pub fn apps(&self, names: &[&str]) -> Vec<PodProcess> {
        let any: SocketAddr = "[::]:8080".parse().expect("addr");
        names
            .iter()
            .map(|n| {
                probe::serve(&self.probe, self.pod(n), &format!("{n}-app"), &[any]).expect("app")
            })
            .collect()
    }

    pub fn connect(
        &self,
        from: &str,
        extra: &[&str],
        targets: &[SocketAddr],
    ) -> Vec<probe::ConnectResult> {
        probe::connect(&self.probe, self.pod(from), extra, targets).expect("client ran")
    }

    pub fn connect_one(&self, from: &str, target: SocketAddr) -> Connected {
        let r = self.connect(from, &[], &[target]).remove(0);
        r.outcome
            .unwrap_or_else(|e| panic!("{from} -> {target}: {e}"))
    }

    pub fn v4(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod(name).ipv4()), port)
    }

    pub fn v6(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.pod(name).ipv6()), port)
    }
}

/// The mesh's configuration file (rewrite it to change the mesh live).
impl Mesh {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// Rewrites the configuration with `edit` and waits until every ztunnel serves it: its
    /// config dump lists exactly the `policies` names.
    pub fn update_config(&self, policies: &[&str], edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), edit(text)).unwrap();
        for node in &self.nodes {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (_, dump) = node.ztunnel.http("Admin", "GET", "/config_dump");
                let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
                let names: Vec<&str> = v["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                if names == policies {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never loaded the new configuration: {dump}",
                    node.name
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

pub fn uid(s: &PodSpec) -> String {
    format!("Kubernetes//v1/Pod/{}/{}", s.namespace, s.name)
}

fn config_yaml(specs: &[PodSpec], pods: &[Pod]) -> String {
    let mut y = String::from("workloads:\n");
    for (s, p) in specs.iter().zip(pods) {
        let Some(node) = s.node else { continue };
        let _ = writeln!(
            y,
            "- uid: {}\n  name: {}\n  namespace: {}\n  serviceAccount: {}",
            uid(s),
            s.name,
            s.namespace,
            s.service_account
        );
        let _ = writeln!(
            y,
            "  addresses: [{}, \"{}\"]\n  node: {node}",
            p.ipv4(),
            p.ipv6()
        );
        let _ = writeln!(
            y,
            "  protocol: {}\n  status: {}",
            if s.tcp { "TCP" } else { "HBONE" },
            if s.healthy { "Healthy" } else { "Unhealthy" }
        );
        if s.in_service {
            let _ = writeln!(
                y,
                "  services: {{shop/web.shop.svc.cluster.local: {{80: 8080}}}}"
            );
        }
    }
    let _ = writeln!(
        y,
        "services:\n- {{name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: [{VIP}], ports: {{80: 8080}}}}"
    );
    y
}
