//! `cargo xtask build-ebpf`: the kernel programs, built with nightly for the BPF target.

use crate::{bootstrap, paths::Paths, run::cmd};
use anyhow::{Context, Result};
use std::{path::PathBuf, process::Command};

/// Bootstraps the toolchain if needed, builds the programs, returns the object's path.
pub fn build(paths: &Paths) -> Result<PathBuf> {
    bootstrap::toolchain(paths)?;
    println!("xtask: building the kernel programs (nightly, bpfel-unknown-none)");
    let path = format!(
        "{}:{}",
        bootstrap::bpf_linker_bin(paths).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("cargo");
    c.args([
        "+nightly",
        "build",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .current_dir(paths.root.join("ebpf/programs"))
    .env("CARGO_TARGET_DIR", paths.ebpf_target())
    .env("PATH", path)
    // The outer (stable) cargo's settings must not leak into the nightly BPF build.
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("RUSTC")
    .env_remove("RUSTDOC")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET");
    cmd(&mut c).context("building the kernel programs")?;
    let object = paths.ebpf_object();
    anyhow::ensure!(
        object.is_file(),
        "the build did not produce {}",
        object.display()
    );
    println!("xtask: kernel programs ready: {}", object.display());
    Ok(object)
}
