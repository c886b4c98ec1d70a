//! The agent's last word on which namespaces may hold pods of the mesh, written in its
//! persistent directory (`/var/lib/amesh`, which survives reboots) so that the plugin can still
//! refuse those pods (and only those) while the agent is down.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentFile {
    /// Namespaces labelled ambient, or holding a pod labelled ambient itself.
    pub ambient_namespaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollmentFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid enrollment file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl EnrollmentFile {
    pub fn read(path: &Path) -> Result<Self, EnrollmentFileError> {
        let text = std::fs::read(path).map_err(|source| EnrollmentFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| EnrollmentFileError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes atomically (a reader never sees half a file).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }

    pub fn may_enroll(&self, namespace: &str) -> bool {
        self.ambient_namespaces.iter().any(|n| n == namespace)
    }
}
