//! amesh's project tasks: `cargo xtask <task>`.
//!
//! - `build-ebpf`: installs what the kernel-program build needs (rust-src for the nightly,
//!   bpf-linker built against the nightly's own LLVM), cached outside the checkout, then
//!   builds the programs.
//! - `test`: formatting, clippy, and every test, privileged ones included (run as root).
//! - `demo`: builds in release and runs the mesh-in-a-box demo.
//! - `bench`: builds in release and measures the mesh against no mesh (`amesh-bench`).
//! - `render-manifests`: renders the Helm chart into `deploy/manifests/amesh.yaml`.
//! - `images`: OCI images of the chart's binaries (umoci, skopeo; no container engine).
//! - `interop`: amesh next to Istio's own ztunnel (a prebuilt binary), scenario by scenario.
//!
//! Everything it installs is idempotent; a second run with nothing changed takes seconds.
#![forbid(unsafe_code)]

mod bootstrap;
mod ebpf;
mod images;
mod paths;
mod run;
mod tally;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-ebpf   bootstrap the eBPF toolchain (cached) and build the kernel programs
  test         check formatting and clippy, then run every test (needs root)
  demo         build in release and run the mesh-in-a-box demo (needs root)
  bench        build in release and measure amesh against no mesh (needs root; --quick: smoke run)
  setup        install the system packages and tools the tests and demo use
  render-manifests
               render deploy/chart/amesh (default values) into deploy/manifests/amesh.yaml
  images       build the chart's OCI images (release; --dev: debug binaries), --push DEST
               copies them to a registry (`cargo xtask images --help`)
  interop      --istio-ztunnel PATH: run amesh next to Istio's ztunnel, built from Istio's
               public source outside the checkout (needs root; not part of `test`)

environment:
  AMESH_CACHE       tool cache (default: $HOME/.cache/amesh)
  CARGO_TARGET_DIR  build output (default: <checkout>/target)";

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    let paths = paths::Paths::discover()?;
    match task.as_str() {
        "build-ebpf" => ebpf::build(&paths).map(drop),
        "setup" => bootstrap::setup(&paths),
        "test" => run::test(&paths, rest),
        "demo" => run::demo(&paths, rest),
        "bench" => run::bench(&paths, rest),
        "render-manifests" => render_manifests(&paths),
        "images" => images::images(&paths, rest),
        "interop" => run::interop(&paths, rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

/// `cargo xtask render-manifests`: the chart rendered with its defaults (release `amesh`,
/// namespace `istio-system`) by Helm's engine, after a strict lint, into the committed
/// manifests that `tests/tests/deploy/main.rs` checks for drift.
fn render_manifests(paths: &paths::Paths) -> Result<()> {
    use anyhow::Context;
    bootstrap::helm_venv(paths)?;
    let python = bootstrap::venv_python(paths);
    let script = paths.root.join("deploy/render.py");
    run::cmd(
        std::process::Command::new(&python)
            .arg(&script)
            .arg("--lint"),
    )?;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/render.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let manifests = paths.root.join("deploy/manifests/amesh.yaml");
    std::fs::write(&manifests, &out.stdout)
        .with_context(|| format!("writing {}", manifests.display()))?;
    println!("xtask: wrote {}", manifests.display());
    Ok(())
}
