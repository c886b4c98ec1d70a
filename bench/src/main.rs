//! `cargo xtask bench`: the cost of the mesh on this machine. Two pods on two "nodes"
//! (network namespaces on one bridge) are measured talking directly, then through amesh
//! (eBPF capture, HBONE in mutual TLS between two ztunnels): throughput (iperf3, 1 and 8
//! streams), request latency at a fixed rate (1-byte TCP ping-pong and HTTP/1.1 with a 1 KB
//! body, p50/p90/p99), new connections per second, and the ztunnels' CPU and peak RSS.
//!
//! Prints a table with the ratios amesh / no mesh and writes `report.json` and `report.svg`
//! to `<target>/bench` (`<target>/bench/quick` with `--quick`). Exits non-zero if any
//! measurement failed. The `serve` and `load` subcommands are what it runs inside the pods.
#![forbid(unsafe_code)]

mod bench;
mod chart;
mod l7;
mod load;
mod procfs;
mod report;
mod serve;
mod stats;
mod workload;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "amesh-bench",
    about = "amesh vs no mesh: throughput, latency, connection rate, ztunnel cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A short smoke run: one repetition of about a second per measurement, no warm-up.
    #[arg(long)]
    quick: bool,
    /// Where report.json and report.svg go (default: <target>/bench, or <target>/bench/quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The server side, run inside the server pod.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// The load generator, run inside the client pod (one JSON line on stdout).
    Load(load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve { port }) => exit(serve::serve(port)),
        Some(Command::Load(args)) => match load::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // The caller reads stdout only.
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
                ExitCode::FAILURE
            }
        },
        None => exit(bench(cli.quick, cli.out)),
    }
}

fn exit(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(quick: bool, out: Option<PathBuf>) -> Result<()> {
    ensure!(
        amesh_sys::fs::euid() == 0,
        "the bench builds network namespaces and loads eBPF programs: run it as root \
         (`sudo -E cargo xtask bench`)"
    );
    ensure!(
        std::process::Command::new("iperf3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "iperf3 is not installed (`cargo xtask setup` installs it)"
    );
    let settings = if quick {
        workload::Settings::quick()
    } else {
        workload::Settings::full()
    };
    let out = match out {
        Some(dir) => dir,
        None => default_out(quick)?,
    };
    println!(
        "amesh bench{}: {} repetition(s) per measurement, median reported; reports go to {}",
        if quick { " (quick)" } else { "" },
        settings.reps,
        out.display()
    );
    let results = bench::run(settings)?;
    let table = report::table(&results);
    println!("\n{table}");
    write_reports(&results, &out)?;
    println!("\nL7: no mesh, the L4 mesh and amesh's waypoint, HTTP through h2load");
    let l7 = l7::run(quick);
    match &l7 {
        Ok(l7) => {
            println!("\n{}", l7.table());
            std::fs::write(
                out.join("l7.json"),
                serde_json::to_vec_pretty(&l7.to_json())?,
            )
            .with_context(|| format!("writing {}", out.join("l7.json").display()))?;
        }
        Err(e) => println!("L7 run failed: {e:#}"),
    }
    println!(
        "took {:.0} s; wrote {} and {}",
        results.elapsed.as_secs_f64(),
        out.join("report.json").display(),
        out.join("report.svg").display()
    );
    let mut failures = results.failures();
    if let Err(e) = &l7 {
        failures.push(format!("L7: {e:#}"));
    }
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// `<target>/bench`: the binary lives in `<target>/<profile>/`.
fn default_out(quick: bool) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding amesh-bench itself")?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("amesh-bench is not inside a target directory; pass --out")?;
    let dir = target.join("bench");
    Ok(if quick { dir.join("quick") } else { dir })
}

fn write_reports(results: &bench::Results, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let json = report::json(results, std::time::SystemTime::now(), root);
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("writing report.json")?;
    let bars: Vec<chart::Bar> = json["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["metrics"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| {
            Some(chart::Bar {
                label: m["name"].as_str()?.to_string(),
                ratio: m["ratio"].as_f64()?,
                higher_is_better: m["higher_is_better"].as_bool()?,
            })
        })
        .collect();
    let title = format!(
        "amesh / no mesh ({}, {} cores, {})",
        json["machine"]["cpu_model"].as_str().unwrap_or("?"),
        json["machine"]["cores"],
        json["timestamp"].as_str().unwrap_or("")
    );
    std::fs::write(out.join("report.svg"), chart::svg(&title, &bars)?)
        .context("writing report.svg")?;
    Ok(())
}
