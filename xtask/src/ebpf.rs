//! `cargo xtask build-ebpf`: the kernel programs, built with nightly for the BPF target.

use crate::{bootstrap, paths::Paths, run::cmd};
use anyhow::{Context, Result};
use std::{path::PathBuf, process::Command};

/// A nightly cargo in the kernel programs' crate, for the BPF target, with bpf-linker on PATH.
fn nightly_cargo(paths: &Paths, subcommand: &str) -> Command {
    let path = format!(
        "{}:{}",
        bootstrap::bpf_linker_bin(paths).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("cargo");
    c.args(["+nightly", subcommand]);
    if subcommand != "fmt" {
        c.args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    }
    c.current_dir(paths.root.join("ebpf/programs"))
        .env("CARGO_TARGET_DIR", paths.ebpf_target())
        .env("PATH", path)
        // The outer (stable) cargo's settings must not leak into the nightly BPF build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    c
}

/// Formatting and clippy for the kernel programs (they are not in the stable workspace).
pub fn lint(paths: &Paths) -> Result<()> {
    bootstrap::toolchain(paths)?;
    println!("xtask: checking the kernel programs' formatting and clippy");
    cmd(nightly_cargo(paths, "fmt").arg("--check"))?;
    cmd(nightly_cargo(paths, "clippy").args(["--", "-D", "warnings"]))
}

/// Bootstraps the toolchain if needed, builds the programs, returns the object's path.
pub fn build(paths: &Paths) -> Result<PathBuf> {
    bootstrap::toolchain(paths)?;
    println!("xtask: building the kernel programs (nightly, bpfel-unknown-none)");
    cmd(&mut nightly_cargo(paths, "build")).context("building the kernel programs")?;
    let object = paths.ebpf_object();
    anyhow::ensure!(
        object.is_file(),
        "the build did not produce {}",
        object.display()
    );
    println!("xtask: kernel programs ready: {}", object.display());
    Ok(object)
}
