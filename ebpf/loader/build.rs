//! Finds the kernel object built by `cargo xtask build-ebpf` and hands its path to the crate,
//! which embeds it. Without it the build stops with a message saying how to make it, unless
//! `AMESH_EBPF_OBJECT=none` asks for a build without it (`cargo check`, `cargo clippy` and
//! editors on a machine without the nightly toolchain): loading the programs then fails at
//! run time with that reason, while everything that only uses pinned maps works.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=AMESH_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo::rustc-check-cfg=cfg(amesh_no_ebpf_object)");
    if std::env::var_os("AMESH_EBPF_OBJECT").is_some_and(|v| v == "none") {
        println!("cargo:rustc-cfg=amesh_no_ebpf_object");
        return;
    }
    let path = match std::env::var_os("AMESH_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => default_object_path(),
    };
    if !path.is_file() {
        eprintln!(
            "error: amesh's eBPF object is not built (looked for {}).\n\
             Run `cargo xtask build-ebpf` first; `cargo xtask test` and `cargo xtask demo` \
             run it for you. To check or lint without it, set AMESH_EBPF_OBJECT=none.",
            path.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=AMESH_EBPF_OBJECT={}", path.display());
}

/// `<target dir>/ebpf/bpfel-unknown-none/release/amesh-ebpf`, where xtask builds it.
fn default_object_path() -> PathBuf {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest.join("../..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("ebpf/bpfel-unknown-none/release/amesh-ebpf")
}
