//! Running commands with their progress shown, and the `test`, `demo` and `bench` tasks.

use crate::{bootstrap, ebpf, paths::Paths};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// Prints what runs, runs it, and fails with the command line if it fails.
pub fn cmd(c: &mut Command) -> Result<()> {
    println!("xtask: $ {}", show(c));
    let status = c
        .status()
        .with_context(|| format!("starting {}", show(c)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(c));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, or `None` if it could not run or failed.
pub fn output(c: &mut Command) -> Option<String> {
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A cargo command for the host workspace, pointed at the embedded eBPF object.
pub fn cargo(paths: &Paths, object: &std::path::Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(&paths.root)
        .env("CARGO_TARGET_DIR", &paths.target)
        .env("AMESH_EBPF_OBJECT", object);
    c
}

fn require_root(task: &str) -> Result<()> {
    let uid = output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "`cargo xtask {task}` builds network namespaces and loads eBPF programs, so it must \
             run as root (CI does); try `sudo -E cargo xtask {task}`"
        );
    }
    Ok(())
}

/// `cargo xtask test`: formatting, clippy, every test in the workspace, and the demo
/// scenario, as root. Ends with one `N passed, M failed` line over all of it.
pub fn test(paths: &Paths, args: &[String]) -> Result<()> {
    require_root("test")?;
    bootstrap::setup(paths)?;
    let object = ebpf::build(paths)?;
    ebpf::lint(paths)?;
    println!("xtask: checking formatting");
    cmd(cargo(paths, &object).args(["fmt", "--all", "--check"]))?;
    println!("xtask: clippy");
    cmd(cargo(paths, &object).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // End-to-end tests start the workspace's binaries (ztunnel, amesh-controlplane, the
    // probe); `cargo test` only builds a package's binaries for that package's own tests.
    println!("xtask: building the binaries the end-to-end tests start");
    cmd(cargo(paths, &object).args(["build", "--workspace", "--bins"]))?;
    println!("xtask: running every test (unit, kernel and end-to-end)");
    let mut tally = crate::tally::run_tests(
        cargo(paths, &object)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(args),
    )?;
    println!("xtask: running the demo scenario (what `cargo xtask demo` shows)");
    build_demo(paths, &object, false)?;
    let demo_ok = cmd(&mut Command::new(paths.target.join("debug/amesh-demo"))).is_ok();
    tally.record(demo_ok);
    // The benchmark's smoke run (debug build, a second or so per measurement) keeps it working.
    println!("xtask: running the benchmark smoke test (`amesh-bench --quick`)");
    let bench = paths.target.join("debug/amesh-bench");
    let bench_ok = cmd(Command::new(bench).arg("--quick").current_dir(&paths.root)).is_ok();
    tally.record(bench_ok);
    println!("amesh: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 || !tally.ok {
        bail!("tests failed");
    }
    Ok(())
}

/// `cargo xtask demo`: release build, then the demo binary.
pub fn demo(paths: &Paths, args: &[String]) -> Result<()> {
    require_root("demo")?;
    bootstrap::runtime(paths)?;
    let object = ebpf::build(paths)?;
    println!("xtask: building the demo (release)");
    build_demo(paths, &object, true)?;
    let bin = paths.target.join("release/amesh-demo");
    cmd(Command::new(&bin).args(args).current_dir(&paths.root))
}

/// `cargo xtask bench`: release build of every binary, then `amesh-bench` with `args`.
pub fn bench(paths: &Paths, args: &[String]) -> Result<()> {
    require_root("bench")?;
    bootstrap::runtime(paths)?;
    let object = ebpf::build(paths)?;
    println!("xtask: building the bench and the binaries it starts (release)");
    build_demo(paths, &object, true)?;
    let bin = paths.target.join("release/amesh-bench");
    cmd(Command::new(&bin).args(args).current_dir(&paths.root))
}

/// `cargo xtask interop --istio-ztunnel PATH`: debug build of the workspace's binaries (the
/// interop scenarios start the control plane and the probe), then `amesh-interop`.
pub fn interop(paths: &Paths, args: &[String]) -> Result<()> {
    require_root("interop")?;
    bootstrap::runtime(paths)?;
    let object = ebpf::build(paths)?;
    println!("xtask: building the binaries the interop scenarios start");
    cmd(cargo(paths, &object).args(["build", "--workspace", "--bins"]))?;
    let bin = paths.target.join("debug/amesh-interop");
    cmd(Command::new(&bin).args(args).current_dir(&paths.root))
}

/// Builds the demo and every binary it starts (ztunnel, the control plane, the probe it
/// runs inside its pods).
fn build_demo(paths: &Paths, object: &std::path::Path, release: bool) -> Result<()> {
    let mut c = cargo(paths, object);
    c.arg("build");
    if release {
        c.arg("--release");
    }
    cmd(c.args(["--workspace", "--bins"]))
}
