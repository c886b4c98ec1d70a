//! The mesh run the way a cluster runs it: per node, the real node agent (`amesh-node`)
//! owning the capture programs and chained into the node's CNI configuration, and a ztunnel
//! it serves over ZDS; pods made by a container runtime's CNI calls through Debian's bridge
//! and host-local plugins with `amesh-cni` last. The control plane and the agents read the
//! same directory of Kubernetes YAML, split into `namespaces.yaml`, `pods.yaml`,
//! `services.yaml` so that a namespace's label can be flipped on its own.

use crate::{
    BedError,
    cni::{self, CniFailure, CniRuntime, PodRef},
    eventually,
    mesh::{
        Mesh, PodSpec, ZtunnelProcess, failed, k8s_uid, namespace_yaml_with, pod_yaml, service_yaml,
    },
    probe,
};
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// A node agent process (text logs to a file), killed when dropped.
pub type AgentProcess = crate::daemon::Daemon;

impl AgentProcess {
    /// Its readiness endpoint, from the log.
    pub fn readiness(&self) -> Option<SocketAddr> {
        self.log().lines().find_map(|l| {
            if !l.contains("endpoint=\"Readiness\"") && !l.contains("endpoint=Readiness") {
                return None;
            }
            l.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }
}

/// Where one node keeps its CNI and agent files.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// What the agent keeps across reboots (`/var/lib/amesh` on a node).
    pub persistent_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub cni_socket: PathBuf,
    pub zds_socket: PathBuf,
    pub pins: PathBuf,
}

/// A node run by the node agent.
#[derive(Debug)]
pub struct AgentNode {
    pub name: &'static str,
    /// Drops (is killed) before the agent, like a pod's containers before the node.
    pub ztunnel: ZtunnelProcess,
    /// `None` while stopped (see [`Mesh::stop_agent`]).
    pub agent: Option<AgentProcess>,
    pub runtime: CniRuntime,
    pub dirs: NodeDirs,
}

impl Mesh {
    /// Makes the bed and the cluster's YAML (namespaces in `ambient` labelled
    /// `istio.io/dataplane-mode=ambient`, the pods scheduled but not created yet); no pod
    /// exists until [`Mesh::try_create_pods`].
    pub fn try_build_for_cni(specs: &[PodSpec], ambient: &[&str]) -> Result<Self, BedError> {
        assert!(
            specs.iter().all(|s| s.node.is_some()),
            "every pod of a CNI-built mesh runs on a node"
        );
        let mut mesh = Mesh::try_build(&[])?;
        mesh.specs = specs.to_vec();
        std::fs::remove_file(mesh.source_path()).map_err(BedError::io("removing mesh.yaml"))?;
        let ambient: BTreeSet<String> = ambient.iter().map(|s| s.to_string()).collect();
        mesh.write_namespaces(&ambient)?;
        mesh.write_pods()?;
        if specs.iter().any(|s| s.in_service) {
            mesh.write_source("services.yaml", &service_yaml())?;
        }
        Ok(mesh)
    }

    /// The source directory both the control plane and the agents read.
    pub fn source_dir(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// Writes one file of the source directory (atomically: a reader never sees half).
    pub fn write_source(&self, file: &str, text: &str) -> Result<(), BedError> {
        let path = self.source_dir().join(file);
        let tmp = self.source_dir().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).map_err(BedError::io(format!("writing {file}")))?;
        std::fs::rename(&tmp, &path).map_err(BedError::io(format!("writing {file}")))
    }

    fn namespaces_of_specs(&self) -> Vec<&'static str> {
        let mut namespaces: Vec<&'static str> = self.specs.iter().map(|s| s.namespace).collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }

    /// Labels exactly the `ambient` namespaces for the mesh; other labels set with
    /// [`Self::set_namespace_label`] stay.
    pub fn write_namespaces(&self, ambient: &BTreeSet<String>) -> Result<(), BedError> {
        let extra = self.namespace_labels();
        let text: String = self
            .namespaces_of_specs()
            .into_iter()
            .map(|ns| {
                let labels = extra.get(ns).cloned().unwrap_or_default();
                namespace_yaml_with(ns, ambient.contains(ns), &labels)
            })
            .collect();
        self.write_source("namespaces.yaml", &text)
    }

    /// Sets (or with `None` removes) a label other than the dataplane mode on a namespace,
    /// e.g. `istio.io/use-waypoint`.
    pub fn set_namespace_label(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), BedError> {
        let mut all = self.namespace_labels();
        let labels = all.entry(namespace.to_string()).or_default();
        labels.retain(|(k, _)| k != key);
        if let Some(v) = value {
            labels.push((key.to_string(), v.to_string()));
        }
        let ambient = self.ambient_namespaces();
        let text: String = self
            .namespaces_of_specs()
            .into_iter()
            .map(|ns| {
                let labels = all.get(ns).cloned().unwrap_or_default();
                namespace_yaml_with(ns, ambient.contains(ns), &labels)
            })
            .collect();
        self.write_source("namespaces.yaml", &text)
    }

    /// The labels other than the dataplane mode of each namespace in the source now.
    fn namespace_labels(&self) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
        let mut all = self.namespace_labels_with_mode();
        for labels in all.values_mut() {
            labels.retain(|(k, _)| k != "istio.io/dataplane-mode");
        }
        all
    }

    /// Every label of each namespace in the source now (`namespaces.yaml`).
    fn namespace_labels_with_mode(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
        let text =
            std::fs::read_to_string(self.source_dir().join("namespaces.yaml")).unwrap_or_default();
        let mut out = std::collections::BTreeMap::new();
        for doc in text.split("---") {
            let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(doc) else {
                continue;
            };
            let Some(name) = v["metadata"]["name"].as_str() else {
                continue;
            };
            let labels: Vec<(String, String)> = v["metadata"]["labels"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect();
            out.insert(name.to_string(), labels);
        }
        out
    }

    /// Flips one namespace's `istio.io/dataplane-mode=ambient` label.
    pub fn set_ambient(&self, namespace: &str, on: bool) -> Result<(), BedError> {
        let mut ambient: BTreeSet<String> = self.ambient_namespaces();
        if on {
            ambient.insert(namespace.to_string());
        } else {
            ambient.remove(namespace);
        }
        self.write_namespaces(&ambient)
    }

    /// The namespaces labelled ambient in the source now.
    pub fn ambient_namespaces(&self) -> BTreeSet<String> {
        self.namespace_labels_with_mode()
            .into_iter()
            .filter(|(_, labels)| {
                labels
                    .iter()
                    .any(|(k, v)| k == "istio.io/dataplane-mode" && v == "ambient")
            })
            .map(|(ns, _)| ns)
            .collect()
    }

    /// Writes the pods as the API server would show them: the created ones Running with
    /// their addresses, the others Pending.
    pub fn write_pods(&self) -> Result<(), BedError> {
        let text: String = self
            .specs
            .iter()
            .map(|s| {
                let created = self.pods.iter().find(|p| p.name() == s.name);
                pod_yaml(s, created.map(|p| (p.ipv4(), p.ipv6())))
            })
            .collect();
        self.write_source("pods.yaml", &text)
    }

    /// Per-node directories.
    pub fn node_dirs(&self, node: &str) -> NodeDirs {
        let base = self.dir.join(node);
        NodeDirs {
            conf_dir: base.join("net.d"),
            bin_dir: base.join("bin"),
            state_dir: base.join("state"),
            persistent_dir: base.join("lib"),
            ipam_dir: base.join("ipam"),
            cni_socket: base.join("cni.sock"),
            zds_socket: self.dir.join(format!("{node}.sock")),
            pins: self.bed.pin_root().join(node),
        }
    }

    fn node_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.specs.iter().filter_map(|s| s.node).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Starts each node: its CNI configuration (the bridge plugin with the node's address
    /// ranges), its node agent, then its ztunnel fed by the running control plane.
    pub fn try_start_agents(&mut self) -> Result<(), BedError> {
        let owned = self.fed_by_control_plane_args(&self.node_token_path())?;
        let ztunnel_args: Vec<&str> = owned.iter().map(String::as_str).collect();
        for (i, name) in self.node_names().into_iter().enumerate() {
            let dirs = self.node_dirs(name);
            for d in [
                &dirs.conf_dir,
                &dirs.bin_dir,
                &dirs.state_dir,
                &dirs.ipam_dir,
            ] {
                std::fs::create_dir_all(d).map_err(BedError::io("creating node directories"))?;
            }
            let block = 101 + i;
            let v4 = (format!("10.200.{block}.2"), format!("10.200.{block}.250"));
            let v6 = (
                format!("fd00:200::{block:x}:2"),
                format!("fd00:200::{block:x}:fa"),
            );
            let conf = cni::bridge_conflist(
                crate::bed::BRIDGE,
                &dirs.ipam_dir,
                (&v4.0, &v4.1),
                (&v6.0, &v6.1),
            );
            std::fs::write(
                dirs.conf_dir.join("10-bed.conflist"),
                serde_json::to_vec_pretty(&conf).unwrap_or_default(),
            )
            .map_err(BedError::io("writing the node's CNI configuration"))?;
            let mut agent = self.spawn_agent(name, &dirs)?;
            let ztunnel =
                self.spawn_ztunnel(name, &self.config_path(), &dirs.pins, &ztunnel_args)?;
            // A pod added before ztunnel is connected is refused (fail closed): the node is
            // up once the agent has handed ztunnel its snapshot.
            agent.wait_log(
                "ztunnel connected to the node agent",
                Duration::from_secs(10),
                |log| {
                    log.contains("ztunnel connected; snapshot sent")
                        .then_some(())
                },
            )?;
            let runtime = CniRuntime::new(
                &dirs.conf_dir,
                &dirs.bin_dir,
                &PathBuf::from(format!("/run/netns/{}", self.bed.underlay())),
            );
            self.agent_nodes.push(AgentNode {
                name,
                ztunnel,
                agent: Some(agent),
                runtime,
                dirs,
            });
        }
        Ok(())
    }

    /// Starts `node`'s agent and waits until it serves the plugin.
    pub fn spawn_agent(&self, node: &str, dirs: &NodeDirs) -> Result<AgentProcess, BedError> {
        let log = self
            .dir
            .join(format!("agent-{node}-{}.log", std::process::id()));
        let path = |p: &Path| p.display().to_string();
        let mut command = Command::new(probe::sibling_binary("amesh-node"));
        command
            .args(["--node-name", node])
            .args(&self.agent_source)
            .args(["--cni-bin-dir", &path(&dirs.bin_dir)])
            .args(["--cni-conf-dir", &path(&dirs.conf_dir)])
            .args(["--cni-plugin", &path(&probe::sibling_binary("amesh-cni"))])
            .args(["--cni-socket", &path(&dirs.cni_socket)])
            .args(["--zds-socket", &path(&dirs.zds_socket)])
            .args(["--pin-root", &path(&dirs.pins)])
            .args(["--cgroup", &path(self.bed.cgroup_path())])
            .args(["--state-dir", &path(&dirs.state_dir)])
            .args(["--persistent-dir", &path(&dirs.persistent_dir)])
            .args(["--readiness", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut agent = AgentProcess::spawn(command, log, "amesh-node")?;
        agent.wait_log("amesh-node starting", Duration::from_secs(15), |log| {
            log.contains("node agent ready").then_some(())
        })?;
        Ok(agent)
    }

    /// The node running by the agent called `name` (panics like [`Mesh::pod`]).
    pub fn agent_node(&self, name: &str) -> &AgentNode {
        self.agent_nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of the mesh")
    }

    /// Kills `node`'s agent (as a crash or an upgrade would).
    pub fn stop_agent(&mut self, node: &str) {
        if let Some(n) = self.agent_nodes.iter_mut().find(|n| n.name == node) {
            n.agent = None;
        }
    }

    /// Starts `node`'s agent again.
    pub fn restart_agent(&mut self, node: &str) -> Result<(), BedError> {
        self.stop_agent(node);
        let dirs = self.agent_node(node).dirs.clone();
        let agent = self.spawn_agent(node, &dirs)?;
        if let Some(n) = self.agent_nodes.iter_mut().find(|n| n.name == node) {
            n.agent = Some(agent);
        }
        Ok(())
    }

    /// What a pod is called in CNI calls (its UID as the API server assigned it, when
    /// [`Mesh::pod_uids`] says so).
    pub fn pod_ref(&self, spec: &PodSpec) -> PodRef {
        PodRef {
            name: spec.name.into(),
            namespace: spec.namespace.into(),
            uid: self
                .pod_uids
                .get(spec.name)
                .cloned()
                .unwrap_or_else(|| k8s_uid(spec)),
            container_id: format!("{}-{}-sandbox", self.bed.prefix(), spec.name),
        }
    }

    /// Creates every pod through its node's CNI chain, then publishes their addresses in the
    /// source (as the kubelet reports them). Fails on the first pod the chain refuses.
    pub fn try_create_pods(&mut self) -> Result<(), BedError> {
        for spec in self.specs.clone() {
            let node = spec.node.unwrap_or_default();
            let pod_ref = self.pod_ref(&spec);
            let made =
                self.bed
                    .add_pod_via_cni(spec.name, &self.agent_node(node).runtime, &pod_ref)?;
            let pod = made.map_err(|f| failed(format!("creating pod {}", spec.name), f))?;
            self.pods.push(pod);
        }
        self.write_pods()
    }

    /// Creates one pod that is not in the specs' order (for tests of refusals): the CNI
    /// chain's verdict.
    pub fn try_cni_add(&self, spec: &PodSpec) -> Result<Result<crate::Pod, CniFailure>, BedError> {
        let node = spec.node.unwrap_or_default();
        self.bed.add_pod_via_cni(
            spec.name,
            &self.agent_node(node).runtime,
            &self.pod_ref(spec),
        )
    }

    /// Tears a pod down through the CNI chain (DEL), as the runtime does when it stops.
    pub fn try_cni_del(&self, name: &str) -> Result<(), CniFailure> {
        let spec = self.spec(name).clone();
        let node = spec.node.unwrap_or_default();
        self.agent_node(node)
            .runtime
            .del(&self.pod_ref(&spec), &self.pod(name).netns_path())
    }

    /// The agent's saved state for `node` (`pods` by `<namespace>/<name>`).
    pub fn agent_state(&self, node: &str) -> serde_json::Value {
        let path = self.agent_node(node).dirs.state_dir.join("state.json");
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Waits until `node`'s agent reports exactly `pods` (`ns/name`) enrolled and
    /// acknowledged by ztunnel.
    pub fn try_wait_enrolled(&self, node: &str, pods: &[&str]) -> Result<(), BedError> {
        let mut want: Vec<String> = pods.iter().map(|s| s.to_string()).collect();
        want.sort();
        eventually(
            format!("{node}'s agent enrolling {want:?}"),
            Duration::from_secs(15),
            || {
                let state = self.agent_state(node);
                let mut enrolled: Vec<String> = state["pods"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, r)| r["redirection_enabled"] == true)
                    .map(|(k, _)| k.clone())
                    .collect();
                enrolled.sort();
                if enrolled == want {
                    Ok(())
                } else {
                    Err(format!("enrolled: {enrolled:?}; state: {state}"))
                }
            },
        )
    }
}
