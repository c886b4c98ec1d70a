//! Where one capture instance keeps its pins on bpffs.
//!
//! ```text
//! <root>/maps/<MAP>             the programs' maps (shared with ztunnel)
//! <root>/progs/<program>        the loaded programs
//! <root>/links/<program>        cgroup attachments
//! <root>/links/sk_lookup_<id>   per-pod sk_lookup attachments
//! ```
//! A restarted owner finds these and adopts them instead of attaching again.

use std::path::{Path, PathBuf};

/// Default pin root on a node.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/amesh";

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links().join(name)
    }

    pub fn sk_lookup_link(&self, pod_id: u32) -> PathBuf {
        self.links().join(format!("sk_lookup_{pod_id}"))
    }

    /// Pod ids that have an sk_lookup link pinned.
    pub fn pinned_sk_lookup_pods(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(self.links()) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("sk_lookup_")?
                    .parse()
                    .ok()
            })
            .collect()
    }
}
