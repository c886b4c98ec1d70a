//! A small mesh on one machine: pods in network namespaces on one underlay, grouped into
//! "nodes", each node with its own capture programs, a stand-in node agent speaking ZDS
//! ([`FakeAgent`]) and a real `ztunnel` process. Workloads, services and policies come from a
//! local configuration file that ztunnel reloads live. Used by ztunnel's end-to-end tests and
//! by the demo.
//!
//! [`Mesh::try_build`] makes the pods and the configuration; [`Mesh::try_start`] enrolls them
//! and starts the nodes (so that a caller can look at the network before the mesh exists).

use crate::{
    BedError, Pod, PodProcess, TestBed, eventually, probe, probe::Connected, zds_agent::FakeAgent,
};
use amesh_ebpf_loader::{Capture, CaptureConfig, EnrollRequest};
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// Port the pods' apps listen on.
pub const APP_PORT: u16 = 8080;
/// The VIP of the mesh's one service, `web.shop.svc.cluster.local:80` (→ 8080).
pub const VIP: &str = "10.96.0.10";

/// One pod of the mesh.
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
    /// Backs the service at `VIP:80`.
    pub in_service: bool,
    /// What the node agent says the pod's service account is, when it differs from the
    /// configuration (to test identity mismatches).
    pub zds_service_account: Option<&'static str>,
    /// More labels on the pod in the source YAML (a waypoint's `gateway-name`).
    pub labels: &'static [(&'static str, &'static str)],
    /// Its DNS goes to ztunnel's proxy (Istio's default; `false` as under
    /// `ambient.istio.io/dns-capture: "false"`).
    pub dns_capture: bool,
}

/// A pod in the mesh on `node`, its service account named after it.
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
        labels: &[],
        dns_capture: true,
    }
}

/// A pod outside the mesh.
pub const fn outside(name: &'static str) -> PodSpec {
    PodSpec {
        node: None,
        namespace: "outside",
        service_account: "default",
        ..pod(name, "outside", "")
    }
}

/// The uid a pod has in the configuration and over ZDS.
pub fn uid(s: &PodSpec) -> String {
    format!("Kubernetes//v1/Pod/{}/{}", s.namespace, s.name)
}

/// A node: its capture programs (none when istio-cni's iptables rules capture), its node
/// agent and its ztunnel.
pub struct Node {
    pub name: &'static str,
    pub ztunnel: ZtunnelProcess,
    pub agent: FakeAgent,
    pub capture: Option<Capture>,
}

impl Node {
    /// The node's capture programs; a node started under istio-cni has none.
    pub fn ebpf(&self) -> &Capture {
        self.capture.as_ref().unwrap_or_else(|| {
            panic!(
                "{} runs under istio-cni: it has no capture programs",
                self.name
            )
        })
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A ztunnel process (JSON logs to a file), killed when dropped.
pub type ZtunnelProcess = crate::daemon::Daemon;

pub(crate) fn failed(what: impl Into<String>, why: impl std::fmt::Display) -> BedError {
    BedError::Command {
        command: what.into(),
        stderr: why.to_string(),
    }
}

/// The control plane process (text logs to a file), killed when dropped.
pub type ControlPlaneProcess = crate::daemon::Daemon;

/// The address in the control plane's "serving xDS" log line (it listens on port 0 in
/// tests and says where it ended up).
pub fn serving_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("serving xDS"))
        .find_map(|l| {
            l.split("listen=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

impl ZtunnelProcess {
    /// The address an endpoint (`Admin`, `Readiness`, `Metrics`) bound, from the log.
    pub fn try_endpoint(&self, role: &str) -> Result<SocketAddr, BedError> {
        let what = format!("finding ztunnel's {role} endpoint");
        eventually(what, Duration::from_secs(10), || {
            self.log()
                .lines()
                .find_map(|line| {
                    let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
                    let f = &v["fields"];
                    (f["message"] == "listening" && f["endpoint"] == role)
                        .then(|| f["address"].as_str()?.parse().ok())?
                })
                .ok_or("not in its log")
        })
    }

    /// `METHOD path` against one of its endpoints: (status, body).
    pub fn try_http(
        &self,
        role: &str,
        method: &str,
        path: &str,
    ) -> Result<(u16, String), BedError> {
        http_raw(
            self.try_endpoint(role)?,
            format!("{method} {path} HTTP/1.1\r\nHost: ztunnel\r\n\r\n").as_bytes(),
        )
    }
}

/// Sends raw bytes to an HTTP endpoint on loopback; (status, body) of the answer.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), BedError> {
    use std::io::{Read, Write};
    let io = |e: std::io::Error| failed(format!("HTTP to {addr}"), e);
    let mut conn = std::net::TcpStream::connect(addr).map_err(io)?;
    conn.write_all(request).map_err(io)?;
    let mut out = String::new();
    conn.read_to_string(&mut out).map_err(io)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The mesh. Fields drop in order: nodes (ztunnels) first, the bed they live in last.
pub struct Mesh {
    pub nodes: Vec<Node>,
    /// Nodes run by the real node agent, their pods made through the CNI chain (see
    /// [`Mesh::try_build_for_cni`]).
    pub agent_nodes: Vec<crate::mesh_agents::AgentNode>,
    /// Where node agents read the cluster (`--source-dir <source>` unless changed).
    pub agent_source: Vec<String>,
    /// Pods' UIDs by name where an API server assigned other ones than the source's.
    pub pod_uids: std::collections::BTreeMap<String, String>,
    /// The control plane, when the ztunnels are fed over xDS instead of a file.
    pub control_plane: Option<ControlPlaneProcess>,
    /// Its address, kept when it is stopped so a restart takes the same port.
    pub xds: Option<SocketAddr>,
    /// Where the control plane reads the cluster: its source arguments (by default the
    /// directory `source/`; e.g. `--kube-url <emulator>` instead).
    pub control_plane_source: Vec<String>,
    pub specs: Vec<PodSpec>,
    pub pods: Vec<Pod>,
    pub dir: PathBuf,
    pub probe: PathBuf,
    pub ztunnel: PathBuf,
    _dir: RemoveOnDrop,
    pub bed: TestBed,
}

/// Removes the mesh's directory (configuration, logs, sockets, CA) when dropped.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("prefix", &self.bed.prefix())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Makes the pods and writes the configuration; nothing is enrolled yet.
    pub fn try_build(specs: &[PodSpec]) -> Result<Self, BedError> {
        let bed = TestBed::new()?;
        let pods = specs
            .iter()
            .map(|s| bed.add_pod(s.name))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = std::env::temp_dir().join(bed.prefix());
        std::fs::create_dir_all(&dir).map_err(BedError::io("creating the mesh's directory"))?;
        std::fs::write(dir.join("mesh.yaml"), config_yaml(specs, &pods))
            .map_err(BedError::io("writing mesh.yaml"))?;
        // The ztunnels' upstream resolvers: none unless a test runs one (never the host's).
        std::fs::write(
            dir.join("resolv.conf"),
            "# upstream resolvers of the test mesh's ztunnels\n",
        )
        .map_err(BedError::io("writing resolv.conf"))?;
        let source = dir.join("source");
        std::fs::create_dir_all(&source).map_err(BedError::io("creating the source directory"))?;
        std::fs::write(source.join("mesh.yaml"), source_yaml(specs, &pods))
            .map_err(BedError::io("writing source/mesh.yaml"))?;
        Ok(Self {
            nodes: Vec::new(),
            agent_nodes: Vec::new(),
            pod_uids: Default::default(),
            agent_source: vec!["--source-dir".into(), source.display().to_string()],
            control_plane: None,
            xds: None,
            control_plane_source: vec!["--source-dir".into(), source.display().to_string()],
            specs: specs.to_vec(),
            pods,
            _dir: RemoveOnDrop(dir.clone()),
            dir,
            probe: probe::sibling_binary("amesh-probe"),
            ztunnel: probe::sibling_binary("ztunnel"),
            bed,
        })
    }

    /// Starts every node: capture programs, enrollment, node agent, ztunnel (with extra
    /// arguments per node, `(node, args)`).
    pub fn try_start(&mut self, extra: &[(&str, &[&str])]) -> Result<(), BedError> {
        let mut names: Vec<&'static str> = self.specs.iter().filter_map(|s| s.node).collect();
        names.sort();
        names.dedup();
        for name in names {
            let args = extra
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |(_, a)| *a);
            self.try_start_node(name, args)?;
        }
        Ok(())
    }

    /// Starts one node (capture programs, enrolment of its pods, node agent, an amesh
    /// ztunnel with `args`), leaving the others to the caller: a mixed mesh runs another
    /// data plane there.
    pub fn try_start_node(&mut self, name: &'static str, args: &[&str]) -> Result<(), BedError> {
        let node = self.start_node(name, args, false)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Starts one node as istio-cni runs one: no capture programs; istio-cni's rules in each
    /// of its pods ([`crate::istio_cni`]); amesh's ztunnel with `--capture iptables` and
    /// `args`, handed the pods over ZDS.
    pub fn try_start_node_under_istio_cni(
        &mut self,
        name: &'static str,
        args: &[&str],
    ) -> Result<(), BedError> {
        let node = self.start_node(name, args, true)?;
        self.nodes.push(node);
        Ok(())
    }

    fn start_node(
        &self,
        name: &'static str,
        args: &[&str],
        istio_cni: bool,
    ) -> Result<Node, BedError> {
        let pin_root = self.bed.pin_root().join(name);
        let members: Vec<usize> = (0..self.specs.len())
            .filter(|&i| self.specs[i].node == Some(name) && !self.specs[i].tcp)
            .collect();
        let capture = if istio_cni {
            for &i in &members {
                crate::istio_cni::set_up(&self.pods[i])?;
            }
            None
        } else {
            Some(self.enrol(&pin_root, &members)?)
        };
        let mut agent = FakeAgent::listen(&self.dir.join(format!("{name}.sock")))
            .map_err(BedError::io("node agent socket"))?;
        let mut args = args.to_vec();
        if istio_cni {
            args.extend(["--capture", "iptables"]);
        }
        let ztunnel = self.spawn_ztunnel(name, &self.config_path(), &pin_root, &args)?;
        agent
            .accept()
            .map_err(BedError::io(format!("waiting for {name}'s ztunnel")))?;
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
                .map_err(BedError::io("ZDS add"))?;
            answer.map_err(|nack| failed(format!("adding {} to ztunnel", s.name), nack))?;
        }
        agent
            .snapshot_sent()
            .map_err(BedError::io("ZDS snapshot"))?
            .map_err(|nack| failed("ZDS snapshot", nack))?;
        Ok(Node {
            name,
            ztunnel,
            agent,
            capture,
        })
    }

    /// Loads (or adopts) the capture programs pinned under `pin_root` and enrols the pods
    /// `members`.
    fn enrol(&self, pin_root: &Path, members: &[usize]) -> Result<Capture, BedError> {
        let config = CaptureConfig {
            pin_root: pin_root.to_path_buf(),
            cgroup: self.bed.cgroup_path().to_path_buf(),
            debug_logs: false,
        };
        let mut capture = Capture::load_or_adopt(&config)
            .map_err(|e| failed("loading the capture programs", e))?;
        for &i in members {
            let (path, addrs) = (self.pods[i].netns_path(), self.pods[i].addresses());
            let req = EnrollRequest {
                netns: &path,
                addresses: &addrs,
                excluded_outbound_ports: &[],
                excluded_inbound_ports: &[],
                bypass_inbound: false,
                dns_capture: self.specs[i].dns_capture,
                listeners: None,
            };
            capture
                .enroll(&req)
                .map_err(|e| failed(format!("enrolling {}", self.specs[i].name), e))?;
        }
        Ok(capture)
    }

    /// The resolv.conf the ztunnels forward DNS to (written before they start).
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// Starts a ztunnel for `node` (its agent socket is `<dir>/<node>.sock`).
    pub fn spawn_ztunnel(
        &self,
        node: &str,
        config: &Path,
        pins: &Path,
        extra: &[&str],
    ) -> Result<ZtunnelProcess, BedError> {
        let log = self
            .dir
            .join(format!("ztunnel-{node}-{}.log", std::process::id()));
        let mut command = Command::new(&self.ztunnel);
        match self.xds {
            Some(xds) => command.args(["--xds-address", &xds.to_string()]),
            None => command.args(["--config", &config.display().to_string()]),
        };
        command
            .args(["--node", node])
            .args([
                "--zds-socket",
                &self.dir.join(format!("{node}.sock")).display().to_string(),
            ])
            .args(["--capture-pins", &pins.display().to_string()])
            .args(["--ca-dir", &self.dir.join("ca").display().to_string()])
            .args([
                "--dns-resolv-conf",
                &self.resolv_conf_path().display().to_string(),
            ])
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
            .env("RUST_LOG", "info");
        ZtunnelProcess::spawn(command, log, "ztunnel")
    }

    /// Stops the nodes and removes everything; reports what could not be removed.
    pub fn close(self) -> crate::Leftovers {
        let Mesh {
            nodes,
            agent_nodes,
            control_plane,
            pods,
            _dir,
            bed,
            ..
        } = self;
        drop(nodes);
        drop(agent_nodes);
        drop(control_plane);
        drop(_dir);
        let left = bed.close();
        drop(pods);
        left
    }

    /// Starts the control plane on the source directory (on the port it had before, if it
    /// ran already); ztunnels started after this are fed over xDS.
    pub fn try_start_control_plane(&mut self) -> Result<SocketAddr, BedError> {
        let listen = self
            .xds
            .map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let log = self
            .dir
            .join(format!("controlplane-{}.log", std::process::id()));
        let token = self.node_token_path();
        if !token.exists() {
            std::fs::write(&token, format!("token-{}\n", self.bed.prefix()))
                .map_err(BedError::io("writing the node token"))?;
        }
        let mut command = Command::new(probe::sibling_binary("amesh-controlplane"));
        command
            .args(["--node-token-file", &token.display().to_string()])
            .args(&self.control_plane_source)
            .args(["--ca-dir", &self.dir.join("ca").display().to_string()])
            .args(["--listen", &listen])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut process = ControlPlaneProcess::spawn(command, log, "amesh-controlplane")?;
        let address = process.wait_log(
            "amesh-controlplane starting",
            Duration::from_secs(10),
            serving_address,
        )?;
        self.control_plane = Some(process);
        self.xds = Some(address);
        Ok(address)
    }

    /// Starts every node with ztunnels that take their configuration and their pods'
    /// certificates from the running control plane, presenting `token` (a file) to it.
    pub fn try_start_fed_by_control_plane(&mut self, token: &Path) -> Result<(), BedError> {
        let owned = self.fed_by_control_plane_args(token)?;
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut nodes: Vec<&'static str> = self.specs.iter().filter_map(|s| s.node).collect();
        nodes.sort();
        nodes.dedup();
        let per_node: Vec<(&str, &[&str])> = nodes.iter().map(|n| (*n, &args[..])).collect();
        self.try_start(&per_node)
    }

    /// ztunnel's arguments for taking its pods' certificates from the running control plane
    /// (its xDS address comes with [`Mesh::spawn_ztunnel`]), presenting `token` (a file).
    pub fn fed_by_control_plane_args(&self, token: &Path) -> Result<Vec<String>, BedError> {
        let xds = self
            .xds
            .ok_or_else(|| failed("starting the nodes", "no control plane was started"))?;
        Ok(vec![
            "--ca-address".into(),
            xds.to_string(),
            "--ca-root-file".into(),
            self.ca_root_path().display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ])
    }

    /// Kills the control plane (the ztunnels keep their last state).
    pub fn stop_control_plane(&mut self) {
        self.control_plane = None;
    }

    /// The node token the control plane accepts (pass it to ztunnels as `--token-file`).
    pub fn node_token_path(&self) -> PathBuf {
        self.dir.join("node-token")
    }

    /// The mesh CA's root certificate (pass it to ztunnels as `--ca-root-file`).
    pub fn ca_root_path(&self) -> PathBuf {
        self.dir.join("ca").join("root-cert.pem")
    }

    /// The control plane's source file (Kubernetes YAML; rewrite it to change the mesh).
    pub fn source_path(&self) -> PathBuf {
        self.dir.join("source").join("mesh.yaml")
    }

    /// Waits until `node`'s ztunnel reports ready (configuration synced, pods added).
    pub fn try_wait_ready(&self, node: &str) -> Result<(), BedError> {
        let z = self.ztunnel(node);
        eventually(
            format!("{node}'s ztunnel becoming ready"),
            Duration::from_secs(10),
            || match z.try_http("Readiness", "GET", "/healthz/ready") {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {body}")),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// The configuration file (rewrite it to change the mesh live).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// Rewrites the configuration with `edit` and waits until every ztunnel serves it: its
    /// config dump lists exactly the `policies` names.
    pub fn try_update_config(
        &self,
        policies: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> Result<(), BedError> {
        self.try_update_file(&self.config_path(), policies, edit)
    }

    /// The same for the control plane's source (Kubernetes YAML): the ztunnels it feeds
    /// serve exactly the `policies` names.
    pub fn try_update_source(
        &self,
        policies: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> Result<(), BedError> {
        self.try_update_file(&self.source_path(), policies, edit)
    }

    fn try_update_file(
        &self,
        path: &Path,
        policies: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> Result<(), BedError> {
        let what = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(BedError::io(format!("reading {what}")))?;
        std::fs::write(path, edit(text)).map_err(BedError::io(format!("writing {what}")))?;
        self.try_wait_policies(policies)
    }

    /// Waits until every ztunnel serves exactly the `policies` names.
    pub fn try_wait_policies(&self, policies: &[&str]) -> Result<(), BedError> {
        for (name, ztunnel) in self.ztunnels() {
            let what = format!("{name} loading the new configuration");
            eventually(what, Duration::from_secs(10), || {
                let (_, dump) = ztunnel.try_http("Admin", "GET", "/config_dump")?;
                let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
                let names: Vec<&str> = v["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                if names == policies {
                    Ok(())
                } else {
                    Err(failed("policies", dump))
                }
            })?;
        }
        Ok(())
    }

    /// The pod called `name`. Like indexing, asking for a pod the caller never specified is
    /// a programming error and panics.
    pub fn pod(&self, name: &str) -> &Pod {
        let i = self
            .specs
            .iter()
            .position(|s| s.name == name)
            .expect("a pod named in the mesh's specs");
        &self.pods[i]
    }

    /// The spec of the pod called `name` (panics like [`Mesh::pod`]).
    pub fn spec(&self, name: &str) -> &PodSpec {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .expect("a pod named in the mesh's specs")
    }

    /// Every node's ztunnel, by node name.
    pub fn ztunnels(&self) -> Vec<(&'static str, &ZtunnelProcess)> {
        let fed = self.nodes.iter().map(|n| (n.name, &n.ztunnel));
        fed.chain(self.agent_nodes.iter().map(|n| (n.name, &n.ztunnel)))
            .collect()
    }

    /// The ztunnel of node `name`, whichever way the node runs (panics like [`Mesh::pod`]).
    pub fn ztunnel(&self, name: &str) -> &ZtunnelProcess {
        self.ztunnels()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, z)| z)
            .expect("a node of the mesh")
    }

    /// The node called `name` (panics like [`Mesh::pod`]).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of the mesh")
    }

    /// Starts each named pod's app on 8080 (answers with `served-by=<pod>-app`).
    pub fn try_apps(&self, names: &[&str]) -> Result<Vec<PodProcess>, BedError> {
        let any = SocketAddr::from(([0u16; 8], APP_PORT));
        names
            .iter()
            .map(|n| probe::serve(&self.probe, self.pod(n), &format!("{n}-app"), &[any]))
            .collect()
    }

    pub fn try_connect(
        &self,
        from: &str,
        extra: &[&str],
        targets: &[SocketAddr],
    ) -> Result<Vec<probe::ConnectResult>, BedError> {
        probe::connect(&self.probe, self.pod(from), extra, targets)
    }

    /// One connection from `from` to `target`; `Err` names why it failed.
    pub fn try_connect_one(&self, from: &str, target: SocketAddr) -> Result<Connected, String> {
        let mut r = self
            .try_connect(from, &["--timeout-ms", "5000"], &[target])
            .map_err(|e| e.to_string())?;
        r.remove(0)
            .outcome
            .map_err(|e| format!("{from} -> {target}: {e}"))
    }

    pub fn v4(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod(name).ipv4()), port)
    }

    pub fn v6(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.pod(name).ipv6()), port)
    }
}

/// The same mesh as Kubernetes objects, for the control plane: a namespace per pod
/// namespace (ambient unless it only holds plain-TCP pods), the pods with their node, service
/// account and addresses, and the `web` service.
fn source_yaml(specs: &[PodSpec], pods: &[Pod]) -> String {
    let mut namespaces: Vec<&str> = specs
        .iter()
        .filter(|s| s.node.is_some())
        .map(|s| s.namespace)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let mut y: String = namespaces
        .into_iter()
        .map(|ns| namespace_yaml(ns, true))
        .collect();
    for (s, p) in specs.iter().zip(pods) {
        if s.node.is_some() {
            y.push_str(&pod_yaml(s, Some((p.ipv4(), p.ipv6()))));
        }
    }
    y.push_str(&service_yaml());
    y
}

/// A Namespace, labelled ambient or not.
pub(crate) fn namespace_yaml(ns: &str, ambient: bool) -> String {
    namespace_yaml_with(ns, ambient, &[])
}

/// The same with more labels.
pub(crate) fn namespace_yaml_with(ns: &str, ambient: bool, extra: &[(String, String)]) -> String {
    let mut labels: Vec<String> = Vec::new();
    if ambient {
        labels.push("istio.io/dataplane-mode: ambient".into());
    }
    labels.extend(extra.iter().map(|(k, v)| format!("{k}: {v}")));
    let labels = format!("{{{}}}", labels.join(", "));
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {labels}}}\n---\n")
}

/// A Pod scheduled on its node; Running with its addresses once it has them.
pub(crate) fn pod_yaml(
    s: &PodSpec,
    addresses: Option<(std::net::Ipv4Addr, std::net::Ipv6Addr)>,
) -> String {
    let mode = if s.tcp {
        ", istio.io/dataplane-mode: none"
    } else {
        ""
    };
    let service = if s.in_service { ", svc: web" } else { "" };
    let extra: String = s
        .labels
        .iter()
        .map(|(k, v)| format!(", {k}: {v}"))
        .collect();
    let ready = if s.healthy { "True" } else { "False" };
    let status = match addresses {
        Some((v4, v6)) => format!(
            "{{phase: Running, conditions: [{{type: Ready, status: \"{ready}\"}}], podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: \"{v6}\"}}]}}"
        ),
        None => "{phase: Pending}".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: {uid}, labels: {{app: {name}{mode}{service}{extra}}}}}\n\
         spec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: app, image: app, ports: [{{name: http, containerPort: {APP_PORT}}}]}}]}}\n\
         status: {status}\n---\n",
        name = s.name,
        ns = s.namespace,
        uid = k8s_uid(s),
        node = s.node.unwrap_or_default(),
        sa = s.service_account,
    )
}

/// The pod's Kubernetes UID in the source (and in CNI_ARGS).
pub fn k8s_uid(s: &PodSpec) -> String {
    format!("uid-{}-{}", s.namespace, s.name)
}

/// The `web` service.
pub(crate) fn service_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
         spec: {{clusterIP: {VIP}, selector: {{svc: web}}, ports: [{{port: 80, targetPort: http}}]}}\n"
    )
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
        // Telemetry names as the control plane derives them for these pods (their own
        // workload, `app: <name>`), with a revision, in the control plane's default cluster.
        let _ = writeln!(
            y,
            "  workloadName: {0}\n  workloadType: pod\n  canonicalName: {0}\n  canonicalRevision: v1\n  clusterId: Kubernetes",
            s.name
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
