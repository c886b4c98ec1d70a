//! What the image tests share: a scratch directory per test (removed on drop, panic and
//! Ctrl-C), `cargo xtask images --dev` as a subprocess, unpacking with umoci, running a
//! command chrooted in an unpacked root, and a registry on loopback.

use amesh_testbed::daemon::Daemon;
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// What the labels' source says in these tests (a name only; nothing dials it).
pub const SOURCE: &str = "https://git.example/amesh/amesh";
const SCRATCH_PREFIX: &str = "amesh-images-";

// ---------------------------------------------------------------- scratch directories

/// Scratch directories alive in this process, removed if it is told to stop.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A per-test directory `amesh-images-<pid>-<n>` under the temp dir, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        amesh_sys::signal::on_terminate(remove_live).expect("installing signal handlers");
        sweep_stale();
        let dir = std::env::temp_dir().join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.clone());
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| d != &self.0);
    }
}

fn remove_live() {
    for dir in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes scratch directories of runs that were killed outright (their pid is gone).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

// ---------------------------------------------------------------- tools

/// Fails (never skips) when `tool` cannot run, saying where it comes from.
pub fn require_tool(tool: &str, from: &str) {
    let runs = Command::new(tool).arg("--version").output().is_ok();
    assert!(runs, "{tool} is missing: {from}");
}

/// Chroot needs root; fails with the reason otherwise.
pub fn require_root() {
    assert_eq!(
        amesh_sys::fs::euid(),
        0,
        "running an image's entrypoint chrooted in its unpacked root needs root (CI runs as \
         root; locally use `sudo -E cargo xtask test`)"
    );
}

pub fn cache() -> PathBuf {
    match std::env::var_os("AMESH_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or AMESH_CACHE is set"))
            .join(".cache/amesh"),
    }
}

pub fn git_head() -> String {
    let out = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "HEAD"])
        .output()
        .expect("running git");
    assert!(out.status.success(), "git rev-parse HEAD failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The chart's appVersion, the images' tag.
pub fn app_version() -> String {
    let chart = std::fs::read_to_string(format!("{ROOT}/deploy/chart/amesh/Chart.yaml"))
        .expect("reading Chart.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&chart).expect("Chart.yaml is YAML");
    doc["appVersion"]
        .as_str()
        .expect("Chart.yaml has a string appVersion")
        .to_string()
}

// ---------------------------------------------------------------- building

/// Images built by `cargo xtask images --dev` into a scratch directory.
#[derive(Debug)]
pub struct Built {
    pub scratch: Scratch,
    pub out: PathBuf,
    /// The revision HEAD was at when the build started.
    pub head: String,
    /// xtask's output (its size table among it).
    pub stdout: String,
}

/// One image of a build: its layout and reference.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub tag: String,
    pub layout: PathBuf,
}

impl Image {
    /// `layout:tag`, for umoci and skopeo's `oci:` transport.
    pub fn oci_ref(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }
}

/// Runs `xtask images --dev` (the debug binaries `cargo xtask test` built) with `extra`.
pub fn build(extra: &[&str]) -> Built {
    require_tool("umoci", "Debian's umoci; run `cargo xtask setup`");
    require_tool("skopeo", "Debian's skopeo; run `cargo xtask setup`");
    let xtask = amesh_testbed::probe::sibling_binary("xtask");
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let head = git_head();
    let mut c = Command::new(&xtask);
    c.args(["images", "--dev", "--source", SOURCE, "--out"])
        .arg(&out)
        .args(extra);
    // A run stopped by a signal takes the build with it (the next run sweeps what is left).
    amesh_sys::spawn::die_with_parent(&mut c);
    let output = c.output().expect("running xtask images");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "xtask images --dev failed ({}):\n{}\n{}",
        output.status,
        tail(&stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Built {
        scratch,
        out,
        head,
        stdout,
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Built {
    /// Every image in `out/oci`, by name, with the one reference its layout holds.
    pub fn images(&self) -> BTreeMap<String, Image> {
        let dir = self.out.join("oci");
        let mut images = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("xtask wrote out/oci") {
            let layout = entry.expect("listing out/oci").path();
            let index: serde_json::Value = serde_json::from_slice(
                &std::fs::read(layout.join("index.json")).expect("a layout has index.json"),
            )
            .expect("index.json is JSON");
            let manifests = index["manifests"]
                .as_array()
                .expect("index.json lists manifests");
            assert_eq!(
                manifests.len(),
                1,
                "{}: one image per layout",
                layout.display()
            );
            let tag = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .expect("the manifest has a reference name")
                .to_string();
            let name = layout
                .file_name()
                .expect("a layout directory")
                .to_string_lossy()
                .into_owned();
            images.insert(name.clone(), Image { name, tag, layout });
        }
        assert!(!images.is_empty(), "xtask built no image");
        images
    }

    /// Unpacks `image` into a new directory of the scratch directory.
    pub fn unpack(&self, image: &Image) -> Bundle {
        let dir = self.scratch.path().join(format!(
            "bundle-{}-{}",
            image.name,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let out = Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image.oci_ref()])
            .arg(&dir)
            .output()
            .expect("running umoci unpack");
        assert!(
            out.status.success(),
            "umoci unpack {} failed: {}",
            image.oci_ref(),
            String::from_utf8_lossy(&out.stderr)
        );
        Bundle::open(dir)
    }
}

// ---------------------------------------------------------------- running

/// An unpacked image: its root file system and the process its runtime spec starts.
#[derive(Debug)]
pub struct Bundle {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Bundle {
    fn open(dir: PathBuf) -> Self {
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).expect("umoci wrote config.json"),
        )
        .expect("config.json is JSON");
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let args = strings(&spec["process"]["args"]);
        let env = strings(&spec["process"]["env"])
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        Self {
            rootfs: dir.join("rootfs"),
            args,
            env,
        }
    }

    /// Runs `argv` chrooted in the root file system with only the image's environment (and
    /// `env`), `stdin` on its standard input.
    pub fn run(&self, argv: &[String], env: &[(&str, &str)], stdin: &[u8]) -> Output {
        use std::io::Write;
        // By its host path: the child's PATH is the image's.
        let mut c = Command::new(host_binary("chroot"));
        c.arg(&self.rootfs)
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("running chroot (coreutils)");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        child
            .wait_with_output()
            .expect("waiting for the chrooted process")
    }

    /// The entrypoint with `--help`.
    pub fn help(&self) -> Output {
        let mut argv = self.args.clone();
        argv.push("--help".into());
        self.run(&argv, &[], b"")
    }

    /// Regular files of the root, as absolute paths inside the image; anything else but
    /// directories (a symlink, a device) fails.
    pub fn files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let mut stack = vec![self.rootfs.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("listing the rootfs") {
                let path = entry.expect("listing the rootfs").path();
                let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
                let inside = format!(
                    "/{}",
                    path.strip_prefix(&self.rootfs)
                        .expect("below rootfs")
                        .display()
                );
                if kind.is_dir() {
                    stack.push(path);
                } else {
                    assert!(kind.is_file(), "{inside} is not a regular file ({kind:?})");
                    files.push(inside);
                }
            }
        }
        files.sort();
        files
    }
}

/// `name` found on this process's PATH, or a failure saying so.
fn host_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH (Debian's coreutils has it)"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- inspecting

/// `skopeo inspect [--config] REF` as JSON.
pub fn inspect(reference: &str, config: bool) -> serde_json::Value {
    let mut c = Command::new("skopeo");
    c.arg("inspect");
    if config {
        c.arg("--config");
    }
    if reference.starts_with("docker://") {
        c.arg("--tls-verify=false");
    }
    let out = c.arg(reference).output().expect("running skopeo inspect");
    assert!(
        out.status.success(),
        "skopeo inspect {reference} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON")
}

// ---------------------------------------------------------------- a registry

/// Debian's docker-registry serving plain HTTP on loopback from a scratch directory; killed
/// on drop (and with this process).
#[derive(Debug)]
pub struct Registry {
    pub addr: SocketAddr,
    _daemon: Daemon,
}

impl Registry {
    pub fn start(scratch: &Scratch) -> Self {
        let bin = cache().join("docker-registry/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo xtask setup` (it unpacks Debian's docker-registry)",
            bin.display()
        );
        let addr = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
            probe.local_addr().expect("its address")
        };
        let dir = scratch.path().join("registry");
        std::fs::create_dir_all(&dir).expect("creating the registry's directory");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("writing the registry's configuration");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg(&config);
        let daemon = Daemon::spawn(cmd, dir.join("registry.log"), "docker-registry")
            .expect("starting docker-registry");
        amesh_testbed::eventually(
            format!("docker-registry listening on {addr}"),
            Duration::from_secs(20),
            || TcpStream::connect(addr).map(drop),
        )
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", daemon.log()));
        Self {
            addr,
            _daemon: daemon,
        }
    }
}
