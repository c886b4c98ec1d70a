//! Where things live: the checkout, the build output, the tool cache.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug)]
pub struct Paths {
    /// The workspace root (the checkout).
    pub root: PathBuf,
    /// Cargo's target directory for the host build.
    pub target: PathBuf,
    /// Tools built or fetched for the project (bpf-linker, ...), outside the checkout.
    pub cache: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives inside the workspace")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let cache = match std::env::var_os("AMESH_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set; set AMESH_CACHE")?)
                    .join(".cache/amesh")
            }
        };
        Ok(Self {
            root,
            target,
            cache,
        })
    }

    /// The kernel programs' own target directory (nightly, bpf target).
    pub fn ebpf_target(&self) -> PathBuf {
        self.target.join("ebpf")
    }

    /// The built kernel object the loader embeds.
    pub fn ebpf_object(&self) -> PathBuf {
        self.ebpf_target()
            .join("bpfel-unknown-none/release/amesh-ebpf")
    }
}
