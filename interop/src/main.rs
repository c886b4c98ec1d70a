//! `cargo xtask interop --istio-ztunnel PATH`: amesh next to Istio's real ztunnel (built from
//! Istio's public source outside this checkout), one scenario at a time, each verified and
//! reported. Not part of `cargo xtask test`: CI cannot build Istio. Needs root (the test bed).
//!
//! Scenarios:
//! - `fed-by-amesh`: Istio's ztunnel configured as its DaemonSet configures it (environment
//!   only, its token file with a trailing newline, istiod's host name) and fed by amesh's
//!   control plane over xDS: it accepts every resource (no NACK), holds the mesh's workloads,
//!   and reads the policies as amesh means them (an ALLOW rule that needs HTTP allows nothing,
//!   a DENY rule keeps its L4 part, STRICT is a DENY for peers without an identity).
//! - `mixed`: amesh's ztunnel (eBPF capture) on one node and Istio's (istio-cni's in-pod
//!   iptables, the pod handed over ZDS) on the other, both fed by amesh: HBONE both ways,
//!   each side counting the other's identity and workload, the Istio side's certificate
//!   issued by amesh's CA.
//! - `mixed-istio-cni`: the same with amesh's ztunnel under istio-cni's rules too
//!   (`--capture iptables`), as when only Istio's ztunnel DaemonSet is swapped for amesh's.
#![forbid(unsafe_code)]

mod fed;
mod istio;
mod mixed;
mod waypoint;

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// A scenario: given Istio's ztunnel, what it proved, or why it failed.
type Scenario = fn(&std::path::Path) -> Result<String>;

const USAGE: &str = "usage: amesh-interop --istio-ztunnel PATH";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-interop: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut istio = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--istio-ztunnel" => istio = Some(PathBuf::from(args.next().context(USAGE)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let istio = istio.context(USAGE)?;
    if !istio.is_file() {
        bail!("--istio-ztunnel {}: no such file", istio.display());
    }
    amesh_testbed::require_root();
    let mut failed = 0;
    let scenarios: [(&str, Scenario); 4] = [
        ("fed-by-amesh", fed::run),
        ("mixed", mixed::run),
        ("mixed-istio-cni", mixed::run_under_istio_cni),
        ("istio-ztunnel-to-amesh-waypoint", waypoint::run),
    ];
    for (name, scenario) in scenarios {
        let outcome = scenario(&istio);
        match outcome {
            Ok(report) => println!("ok   {name}: {report}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} scenario(s) failed");
    }
    Ok(())
}
