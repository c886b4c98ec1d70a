//! Installs what the build and the tests need, idempotently: Debian packages, the nightly's
//! rust-src, and bpf-linker built against the LLVM inside the nightly toolchain (no release
//! binary can be downloaded here, and bpf-linker's default LLVM is not on these machines).

use crate::{
    paths::Paths,
    run::{cmd, output},
};
use anyhow::{Context, Result, bail};
use std::{path::PathBuf, process::Command};

/// The bpf-linker release known to work with the nightly's LLVM (see docs/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests, demo and bench use, each with a file that shows it is there:
/// `ip` builds the test networks, `mount` mounts bpffs, the CNI reference plugins build pods
/// as a container runtime does, `iperf3` and `h2load` are the bench's load tools.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/bin/ip"),
    ("mount", "/usr/bin/mount"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("iperf3", "/usr/bin/iperf3"),
    // The Helm engine for the chart tests lives in a venv of Debian's Python.
    ("python3-venv", "/usr/lib/python3.11/ensurepip/__init__.py"),
    ("nghttp2-client", "/usr/bin/h2load"),
    ("curl", "/usr/bin/curl"),
    // gRPC's own Python implementation: the real gRPC client and server of the waypoint's
    // gRPC tests.
    (
        "python3-grpcio",
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
    ),
    // A real DNS client and a real upstream resolver for the DNS proxy's tests and the demo.
    ("bind9-dnsutils", "/usr/bin/dig"),
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    // protobuf's Python implementation: the gRPC external authorizer's messages.
    (
        "python3-protobuf",
        "/usr/lib/python3/dist-packages/google/protobuf/__init__.py",
    ),
    // The interop scenarios put istio-cni's in-pod REDIRECT rules in front of Istio's ztunnel.
    ("iptables", "/usr/sbin/iptables"),
    // `cargo xtask images`: umoci writes OCI layouts, skopeo copies them (no container
    // engine), strip drops the binaries' debug info, and the images carry the CA bundle.
    ("umoci", "/usr/bin/umoci"),
    ("skopeo", "/usr/bin/skopeo"),
    ("binutils", "/usr/bin/strip"),
    ("ca-certificates", "/etc/ssl/certs/ca-certificates.crt"),
];

/// `cargo xtask setup`: everything the tests and demo need but the eBPF build itself.
pub fn setup(paths: &Paths) -> Result<()> {
    runtime(paths)?;
    helm_venv(paths)?;
    registry(paths).map(drop)
}

/// What running the mesh needs (the demo and the bench): no Helm engine.
pub fn runtime(paths: &Paths) -> Result<()> {
    apt_packages()?;
    mount_bpffs()?;
    toolchain(paths)
}

/// What building the kernel programs needs: rust-src for the nightly and bpf-linker.
pub fn toolchain(paths: &Paths) -> Result<()> {
    rust_src()?;
    bpf_linker(paths)
}

pub fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    cmd(Command::new("apt-get").arg("update").arg("-qq"))
        .context("apt-get needs root; install these packages yourself if you cannot")?;
    // No questions (iperf3's package asks whether to run a daemon otherwise).
    cmd(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

/// Debian's docker-registry (a registry on loopback for the image tests' `--push`), unpacked
/// into the cache rather than installed: the package would enable and start a registry on
/// port 5000 of every interface. Returns the binary.
pub fn registry(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.cache.join("docker-registry");
    let bin = registry_bin(paths);
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    println!(
        "xtask: unpacking Debian's docker-registry into {}",
        dir.display()
    );
    let download = |update: bool| -> Result<()> {
        if update {
            cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        }
        cmd(Command::new("apt-get")
            .args(["download", "-qq", "docker-registry"])
            .current_dir(&dir))
    };
    // The package lists may be missing on a fresh machine where nothing else was installed.
    download(false).or_else(|_| download(true))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_file(&deb)?;
    anyhow::ensure!(bin.is_file(), "the package has no {}", bin.display());
    Ok(bin)
}

/// Where [`registry`] puts the registry binary.
pub fn registry_bin(paths: &Paths) -> PathBuf {
    paths.cache.join("docker-registry/usr/bin/docker-registry")
}

/// Pins live on bpffs; most machines mount it, some (like a fresh CI box) do not.
fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if output(Command::new("id").arg("-u"))
        .as_deref()
        .map(str::trim)
        != Some("0")
    {
        return Ok(()); // the build does not need it; privileged tasks check for root first
    }
    println!("xtask: mounting bpffs at /sys/fs/bpf");
    cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup` is needed to manage the nightly toolchain the kernel programs build with")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("xtask: adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
    cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's sysroot, LLVM major version and rustc version line.
fn nightly() -> Result<(PathBuf, String, String)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("the nightly toolchain is missing: `rustup toolchain install nightly`")?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV does not name its LLVM")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("nightly sysroot")?;
    let release = vv.lines().next().unwrap_or_default().to_string();
    Ok((PathBuf::from(sysroot.trim()), major, release))
}

/// Where the project's bpf-linker lives.
pub fn bpf_linker_bin(paths: &Paths) -> PathBuf {
    paths.cache.join("bpf-linker/bin")
}

fn bpf_linker(paths: &Paths) -> Result<()> {
    let (sysroot, llvm_major, release) = nightly()?;
    let stamp_path = paths.cache.join("bpf-linker/stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {release}");
    let bin = bpf_linker_bin(paths).join("bpf-linker");
    if bin.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    // bpf-linker links against libLLVM; give it the nightly's under the name it looks for.
    let lib_dir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        });
    let Some(libllvm) = libllvm else {
        bail!(
            "the nightly toolchain has no libLLVM.so.{llvm_major}* in {}; bpf-linker needs it",
            lib_dir.display()
        );
    };
    let llvm_prefix = paths.cache.join("llvm");
    let link = llvm_prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(llvm_prefix.join("lib"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute, once)"
    );
    let mut c = Command::new("cargo");
    c.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--force",
    ])
    .args(["--features", &format!("llvm-{llvm_major}")])
    .arg("--root")
    .arg(paths.cache.join("bpf-linker"))
    .env("LLVM_PREFIX", &llvm_prefix)
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("RUSTUP_TOOLCHAIN");
    cmd(&mut c).context("building bpf-linker from crates.io")?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(())
}

/// helm-python-sdk: Helm v4's own engine as a library (a wheel with the native library
/// inside), which renders and lints `deploy/chart` where no helm binary can be installed.
/// The version `deploy/render.py` was verified with.
const HELM_PYTHON_SDK_VERSION: &str = "0.2.2";

/// The Python of the project's venv, which has helm-python-sdk (runs `deploy/render.py`).
pub fn venv_python(paths: &Paths) -> PathBuf {
    paths.cache.join("venv/bin/python")
}

/// Creates `<cache>/venv` and installs the pinned helm-python-sdk into it, unless the venv
/// already imports that version.
pub fn helm_venv(paths: &Paths) -> Result<()> {
    let python = venv_python(paths);
    let has = output(
        Command::new(&python).args(["-c", "import helm_python; print(helm_python.__version__)"]),
    );
    if has.as_deref().map(str::trim) == Some(HELM_PYTHON_SDK_VERSION) {
        return Ok(());
    }
    let venv = paths.cache.join("venv");
    if !python.exists() {
        // pyenv's python3 first (it has venv and ensurepip); Debian's needs python3-venv.
        let base = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| output(Command::new(p).args(["-c", "import venv, ensurepip"])).is_some())
            .context(
                "no python3 with venv and ensurepip (on Debian: apt-get install python3-venv)",
            )?;
        println!("xtask: creating a Python venv at {}", venv.display());
        cmd(Command::new(base)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
    }
    println!("xtask: installing helm-python-sdk {HELM_PYTHON_SDK_VERSION} (renders deploy/chart)");
    cmd(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("helm-python-sdk=={HELM_PYTHON_SDK_VERSION}"),
    ]))
    .context("installing helm-python-sdk from PyPI")
}
