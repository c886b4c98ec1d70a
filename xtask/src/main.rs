//! amesh's project tasks: `cargo xtask <task>`.
//!
//! - `build-ebpf`: installs what the kernel-program build needs (rust-src for the nightly,
//!   bpf-linker built against the nightly's own LLVM), cached outside the checkout, then
//!   builds the programs.
//! - `test`: formatting, clippy, and every test, privileged ones included (run as root).
//! - `demo`: builds in release and runs the mesh-in-a-box demo.
//!
//! Everything it installs is idempotent; a second run with nothing changed takes seconds.
#![forbid(unsafe_code)]

mod bootstrap;
mod ebpf;
mod paths;
mod run;
mod tally;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-ebpf   bootstrap the eBPF toolchain (cached) and build the kernel programs
  test         check formatting and clippy, then run every test (needs root)
  demo         build in release and run the mesh-in-a-box demo (needs root)
  setup        install the system packages and tools the tests and demo use

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
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}
