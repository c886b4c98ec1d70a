//! A container runtime's CNI side, as containerd and CRI-O drive it (libcni's rules): find the
//! node's primary configuration (the first `*.conf`/`*.conflist` by name), run `loopback` for
//! `lo`, then each plugin of the list in order for ADD (each gets the previous one's result as
//! `prevResult`) and in reverse for DEL, with the `CNI_*` environment and the pod's identity in
//! `CNI_ARGS`. Plugins run inside the underlay namespace (where the node's bridge lives), from
//! real binaries: Debian's reference plugins and amesh's.

use amesh_sys::netns::Netns;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    io::Write,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

/// Plugins that run where the node's processes run (not in the underlay): amesh's.
const AGENT_PLUGINS: [&str; 1] = ["amesh-cni"];

/// Where Debian installs the reference plugins (`containernetworking-plugins`).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The pod a call is about.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The sandbox's container id.
    pub container_id: String,
}

/// A plugin call that failed: its CNI error object when it printed one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CNI plugin {plugin} failed: code {code:?}: {msg} ({details}) stderr: {stderr}")]
pub struct CniFailure {
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct CniRuntime {
    /// The node's CNI conf dir.
    pub conf_dir: PathBuf,
    /// `CNI_PATH`: the node's bin dir first, then the reference plugins.
    pub path: Vec<PathBuf>,
    /// Where the plugins run (the namespace of the node's bridge).
    pub underlay: PathBuf,
    /// ADD results by container id, for DEL and CHECK (libcni keeps the same cache).
    results: Mutex<BTreeMap<String, Value>>,
}

impl CniRuntime {
    pub fn new(conf_dir: &Path, bin_dir: &Path, underlay: &Path) -> Self {
        Self {
            conf_dir: conf_dir.to_path_buf(),
            path: vec![bin_dir.to_path_buf(), PathBuf::from(REFERENCE_PLUGINS)],
            underlay: underlay.to_path_buf(),
            results: Mutex::default(),
        }
    }

    /// The primary configuration as a list (what the runtime would use now).
    pub fn primary(&self) -> Result<(PathBuf, Value), String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| format!("{}: {e}", self.conf_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
            })
            .collect();
        files.sort();
        let file = files
            .into_iter()
            .next()
            .ok_or_else(|| format!("no CNI configuration in {}", self.conf_dir.display()))?;
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let conf: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let list = if conf.get("plugins").is_some() {
            conf
        } else {
            json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]})
        };
        Ok((file, list))
    }

    /// The plugin types of the chain, in order.
    pub fn chain(&self) -> Result<Vec<String>, String> {
        let (_, list) = self.primary()?;
        Ok(list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["type"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    /// ADD: loopback, then the chain; the final result.
    pub fn add(&self, pod: &PodRef, netns: &Path) -> Result<Value, CniFailure> {
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        self.invoke(&lo, "ADD", pod, netns, "lo", None)?;
        let (_, list) = self.primary().map_err(|e| config_failure("ADD", e))?;
        let mut prev: Option<Value> = None;
        for plugin in plugins_of(&list) {
            prev = Some(self.invoke(&plugin, "ADD", pod, netns, "eth0", prev.as_ref())?);
        }
        let result = prev.unwrap_or_else(|| json!({}));
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.container_id.clone(), result.clone());
        Ok(result)
    }

    /// CHECK: the chain in order, each with the cached ADD result.
    pub fn check(&self, pod: &PodRef, netns: &Path) -> Result<(), CniFailure> {
        let (_, list) = self.primary().map_err(|e| config_failure("CHECK", e))?;
        let prev = self.cached(pod);
        for plugin in plugins_of(&list) {
            self.invoke(&plugin, "CHECK", pod, netns, "eth0", prev.as_ref())?;
        }
        Ok(())
    }

    /// DEL: the chain in reverse, then loopback; every plugin is called even if one fails
    /// (the first failure is returned).
    pub fn del(&self, pod: &PodRef, netns: &Path) -> Result<(), CniFailure> {
        let (_, list) = self.primary().map_err(|e| config_failure("DEL", e))?;
        let prev = self.cached(pod);
        let mut first = None;
        for plugin in plugins_of(&list).into_iter().rev() {
            if let Err(e) = self.invoke(&plugin, "DEL", pod, netns, "eth0", prev.as_ref()) {
                first.get_or_insert(e);
            }
        }
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pod.container_id);
        first.map_or(Ok(()), Err)
    }

    fn cached(&self, pod: &PodRef) -> Option<Value> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pod.container_id)
            .cloned()
    }

    /// Runs one plugin with `conf` (plus the runtime's fields) on stdin.
    pub fn invoke(
        &self,
        conf: &Value,
        command: &str,
        pod: &PodRef,
        netns: &Path,
        ifname: &str,
        prev: Option<&Value>,
    ) -> Result<Value, CniFailure> {
        let mut conf = conf.clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let plugin = conf["type"].as_str().unwrap_or_default().to_string();
        let stdin = conf.to_string();
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.container_id, pod.uid
                ),
            ),
        ];
        let (ok, stdout, stderr) = self.exec(&plugin, &env, stdin.as_bytes())?;
        let parsed: Option<Value> = serde_json::from_str(&stdout).ok();
        if ok {
            return Ok(parsed.unwrap_or_else(|| json!({})));
        }
        let err = parsed.unwrap_or_default();
        Err(CniFailure {
            plugin,
            code: err["code"].as_u64(),
            msg: err["msg"].as_str().map_or(stdout, str::to_string),
            details: err["details"].as_str().unwrap_or_default().into(),
            stderr,
        })
    }

    /// Runs plugin `plugin` with any environment and stdin (for malformed calls).
    pub fn exec(
        &self,
        plugin: &str,
        env: &[(&str, String)],
        stdin: &[u8],
    ) -> Result<(bool, String, String), CniFailure> {
        let fail = |msg: String| CniFailure {
            plugin: plugin.to_string(),
            code: None,
            msg,
            details: String::new(),
            stderr: String::new(),
        };
        let binary = self
            .path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| fail(format!("plugin {plugin} not found in CNI_PATH")))?;
        let underlay = Netns::open(&self.underlay).map_err(|e| fail(e.to_string()))?;
        let cni_path = std::env::join_paths(&self.path)
            .map_err(|e| fail(e.to_string()))?
            .into_string()
            .unwrap_or_default();
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .env("CNI_PATH", cni_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The reference plugins build the pod's link to the node's bridge, which lives in the
        // underlay; amesh's plugin only talks to the agent (a Unix socket) and the API
        // server, both reached from where the bed's node processes run (this namespace).
        if !AGENT_PLUGINS.contains(&plugin) {
            amesh_sys::spawn::into_pod(&mut cmd, underlay.as_fd(), None);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for {plugin}: {e}")))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn plugins_of(list: &Value) -> Vec<Value> {
    list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut p = p.clone();
            p["name"] = list["name"].clone();
            p["cniVersion"] = list["cniVersion"].clone();
            p
        })
        .collect()
}

fn config_failure(command: &str, msg: String) -> CniFailure {
    CniFailure {
        plugin: format!("(configuration for {command})"),
        code: None,
        msg,
        details: String::new(),
        stderr: String::new(),
    }
}

/// The node's own network configuration, as a cluster's CNI would write it: Debian's bridge
/// plugin on the underlay bridge with host-local addresses from this node's ranges.
pub fn bridge_conflist(
    bridge: &str,
    ipam_dir: &Path,
    v4_range: (&str, &str),
    v6_range: (&str, &str),
) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "amesh-bed",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "hairpinMode": false,
            "promiscMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir.display().to_string(),
                "ranges": [
                    [{"subnet": "10.200.0.0/16", "rangeStart": v4_range.0, "rangeEnd": v4_range.1}],
                    [{"subnet": "fd00:200::/64", "rangeStart": v6_range.0, "rangeEnd": v6_range.1}]
                ]
            }
        }]
    })
}

/// The pod's addresses in a CNI result.
pub fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}
