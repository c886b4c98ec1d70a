//! What the agent must remember across its own restarts: which pods it enrolled, through
//! which network namespace, and whether ztunnel acknowledged them. Written atomically after
//! every change.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// One enrolled pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The uid ztunnel knows the pod by.
    pub uid: String,
    pub service_account: String,
    /// The namespace path it was enrolled through (CNI_NETNS, or a process's
    /// `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    pub netns_cookie: u64,
    pub ips: Vec<IpAddr>,
    /// The sandbox a CNI ADD enrolled it for (none when found running by reconciliation):
    /// a DEL for another sandbox leaves it alone.
    #[serde(default)]
    pub container_id: Option<String>,
    /// ztunnel acknowledged it (the pod carries `ambient.istio.io/redirection: enabled`).
    pub redirection_enabled: bool,
}

/// Records by `<namespace>/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub pods: BTreeMap<String, Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl State {
    /// The saved state, or an empty one on a first start.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
