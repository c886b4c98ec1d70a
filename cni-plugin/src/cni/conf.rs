//! The network configuration the runtime hands the plugin on stdin, and `CNI_ARGS`.

use crate::cni::{CniError, error::code};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

/// Versions of the specification this plugin speaks (those that define chaining with
/// `prevResult`).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Where the node agent listens for the plugin unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/amesh/cni.sock";
/// Where the plugin logs unless the configuration says otherwise.
pub const DEFAULT_LOG_FILE: &str = "/var/run/amesh/cni.log";

/// The plugin's entry in the chain, as the node agent writes it into the conflist (plus the
/// fields the runtime injects: `name`, `cniVersion`, `prevResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node agent's Unix socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// How long to wait for the agent's answer.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_log")]
    pub log_file: PathBuf,
    /// Namespaces whose pods never enter the mesh; their pods never wait for the agent.
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// The agent's last word on which namespaces are ambient, used while it is down.
    #[serde(default)]
    pub enrollment_file: Option<PathBuf>,
    /// How to read the pod and its namespace from the Kubernetes API while the agent is
    /// down (written by the agent when it runs against a cluster).
    #[serde(default)]
    pub kubernetes: Option<crate::cni::kube::KubeAccess>,
    /// The result of the plugins before this one (required for ADD and CHECK).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
}

fn default_socket() -> PathBuf {
    DEFAULT_AGENT_SOCKET.into()
}
/// Longer than the agent takes at worst (waiting for the pod to reach its view, then for
/// ztunnel's answer), so that a slow agent is never taken for a dead one.
fn default_timeout() -> u64 {
    30_000
}
fn default_log() -> PathBuf {
    DEFAULT_LOG_FILE.into()
}

impl PluginConf {
    /// Parses stdin; every failure is a CNI error object that says what is wrong.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                "1.0.0",
                code::DECODE_FAILURE,
                "the network configuration on stdin is not valid JSON",
                e.to_string(),
            )
        })?;
        let version = match value.get("cniVersion") {
            Some(serde_json::Value::String(v)) if !v.is_empty() => v.clone(),
            None | Some(serde_json::Value::Null) => {
                return Err(CniError::new(
                    "1.0.0",
                    code::INVALID_CONFIG,
                    "the network configuration has no cniVersion",
                    "set \"cniVersion\" (e.g. \"1.0.0\")",
                ));
            }
            Some(other) => {
                return Err(CniError::new(
                    "1.0.0",
                    code::INVALID_CONFIG,
                    "the network configuration's cniVersion is not a version string",
                    format!("cniVersion is {other}; write it as a string (e.g. \"1.0.0\")"),
                ));
            }
        };
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                "1.0.0",
                code::INCOMPATIBLE_VERSION,
                format!("CNI version {version} is not supported"),
                format!("amesh-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let conf: PluginConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                &version,
                code::INVALID_CONFIG,
                "the network configuration is invalid",
                e.to_string(),
            )
        })?;
        if conf.timeout_ms == 0 {
            return Err(CniError::new(
                &version,
                code::INVALID_CONFIG,
                "the network configuration is invalid",
                "timeout_ms must be greater than 0",
            ));
        }
        Ok(conf)
    }

    /// The pod's IPs from `prevResult` (`ips[].address`, CIDR notation).
    pub fn prev_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let invalid = |details: String| {
            CniError::new(
                &self.cni_version,
                code::INVALID_CONFIG,
                "prevResult is invalid",
                details,
            )
        };
        let prev = self.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                &self.cni_version,
                code::INVALID_CONFIG,
                "amesh-cni must be chained after a plugin that assigns the pod's IPs",
                "the configuration has no prevResult",
            )
        })?;
        let ips = match prev.get("ips") {
            None => return Ok(Vec::new()),
            Some(serde_json::Value::Array(ips)) => ips,
            Some(_) => return Err(invalid("\"ips\" is not a list".into())),
        };
        ips.iter()
            .map(|ip| {
                let cidr = ip
                    .get("address")
                    .and_then(|a| a.as_str())
                    .ok_or_else(|| invalid("an entry of \"ips\" has no address".into()))?;
                let addr = cidr.split('/').next().unwrap_or(cidr);
                addr.parse()
                    .map_err(|_| invalid(format!("{cidr:?} is not an IP address")))
            })
            .collect()
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2` (Kubernetes runtimes pass the pod's name, namespace and UID).
pub fn parse_args(args: &str) -> Result<BTreeMap<String, String>, String> {
    args.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("{kv:?} is not KEY=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chained_config() {
        let conf = PluginConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"amesh-cni","agent_socket":"/x.sock",
                "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64"}]}}"#,
        )
        .expect("valid");
        assert_eq!(conf.agent_socket, PathBuf::from("/x.sock"));
        assert_eq!(
            conf.prev_ips().expect("ips"),
            vec![
                "10.1.0.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
    }

    #[test]
    fn bad_input_gets_the_right_codes() {
        let code_of = |s: &[u8]| PluginConf::parse(s).expect_err("invalid").code;
        assert_eq!(code_of(b"{not json"), code::DECODE_FAILURE);
        assert_eq!(code_of(br#"{"type":"amesh-cni"}"#), code::INVALID_CONFIG);
        // A number is the wrong type, not a missing field.
        let numeric = PluginConf::parse(br#"{"cniVersion":1,"type":"amesh-cni"}"#)
            .expect_err("a number is no version");
        assert_eq!(numeric.code, code::INVALID_CONFIG);
        assert!(
            numeric.msg.contains("not a version string"),
            "{}",
            numeric.msg
        );
        assert!(
            numeric.details.contains("cniVersion is 1;"),
            "{}",
            numeric.details
        );
        let empty =
            PluginConf::parse(br#"{"cniVersion":"","type":"amesh-cni"}"#).expect_err("empty");
        assert!(empty.msg.contains("not a version string"), "{}", empty.msg);
        assert_eq!(
            code_of(br#"{"cniVersion":"9.9.9","type":"amesh-cni"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(code_of(br#"{"cniVersion":"1.0.0"}"#), code::INVALID_CONFIG);
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","type":"amesh-cni","timeout_ms":0}"#),
            code::INVALID_CONFIG
        );
        let no_prev =
            PluginConf::parse(br#"{"cniVersion":"1.0.0","type":"amesh-cni"}"#).expect("valid");
        assert_eq!(
            no_prev.prev_ips().expect_err("no prevResult").code,
            code::INVALID_CONFIG
        );
        let bad_ip = PluginConf::parse(
            br#"{"cniVersion":"1.0.0","type":"amesh-cni","prevResult":{"ips":[{"address":"nope/24"}]}}"#,
        )
        .expect("valid");
        let e = bad_ip.prev_ips().expect_err("bad ip");
        assert!(e.details.contains("nope"), "{e}");
    }

    #[test]
    fn cni_args() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0")
            .expect("valid");
        assert_eq!(a["K8S_POD_NAME"], "cart-0");
        assert!(parse_args("K8S_POD_NAME").is_err());
    }
}
