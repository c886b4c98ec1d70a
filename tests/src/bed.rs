//! The bed: an underlay namespace with a bridge, the pods on it, a cgroup and a pin root, all
//! under one per-run prefix and all removed together.

use crate::{
    BedError, Pod, cgroup,
    cgroup::TestCgroup,
    cni::{CniFailure, CniRuntime, PodRef},
    ip, names,
    sniff::Sniffer,
};
use amesh_sys::netns::Netns;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

/// Where beds put bpffs pins (`<root>/<prefix>`).
const BPFFS: &str = "/sys/fs/bpf";
/// The bridge every pod's veth joins, inside the underlay namespace.
pub const BRIDGE: &str = "br0";

/// Prefixes of the beds alive in this process, cleaned up on Ctrl-C / SIGTERM.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Processes the mesh started outside any pod (ztunnels, agents, the control plane), killed
/// on Ctrl-C / SIGTERM: nothing would stop them once this process is gone.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Set once a Ctrl-C / SIGTERM cleanup began: nothing new is made after that (it would
/// escape the cleanup).
static TERMINATING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once this process is being stopped by a signal.
pub(crate) fn terminating() -> bool {
    TERMINATING.load(Ordering::SeqCst)
}

/// Files to remove if this process is told to stop (e.g. a state file describing the mesh).
static FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `path` when this process gets Ctrl-C / SIGTERM (and the bed's objects go).
pub fn remove_on_terminate(path: &Path) {
    FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// Registers a process to kill if this one is told to stop.
pub(crate) fn track_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Forgets a process (it was stopped the ordinary way).
pub(crate) fn untrack_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

#[derive(Debug)]
pub struct TestBed {
    prefix: String,
    underlay: String,
    underlay_ns: Netns,
    cgroup: TestCgroup,
    cgroup_procs: Arc<std::fs::File>,
    next_index: AtomicU32,
    closed: bool,
}

/// What a cleanup could not remove (empty when everything went).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub netns: Vec<String>,
    pub cgroup: Option<PathBuf>,
    pub pins: Option<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl TestBed {
    /// Makes a new bed: sweeps what killed runs left, mounts bpffs if needed, creates the
    /// underlay namespace with its bridge and the bed's cgroup.
    pub fn new() -> Result<Self, BedError> {
        amesh_sys::signal::on_terminate(cleanup_live)
            .map_err(BedError::io("installing signal handlers"))?;
        sweep_stale();
        ensure_bpffs()?;
        let prefix = names::new_prefix();
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(prefix.clone());
        let cg_root = amesh_sys::fs::cgroup2_mount().ok_or(BedError::NoCgroup2)?;
        let underlay = format!("{prefix}-ul");
        ip::ip(&["netns", "add", &underlay])?;
        // A fixed address: otherwise the bridge takes its lowest port's, which changes as pods
        // come and go (and the CNI bridge plugin's CHECK compares it with the ADD result).
        ip::ip_in(
            &underlay,
            &[
                "link",
                "add",
                BRIDGE,
                "address",
                "02:a5:0e:00:00:01",
                "type",
                "bridge",
            ],
        )?;
        // Promiscuous, so that a capture on the bridge sees frames forwarded between pods.
        ip::ip_in(&underlay, &["link", "set", BRIDGE, "promisc", "on", "up"])?;
        ip::ip_in(&underlay, &["link", "set", "lo", "up"])?;
        let underlay_ns = Netns::open(format!("/run/netns/{underlay}"))?;
        let cgroup = TestCgroup::create(&cg_root, &prefix)?;
        let cgroup_procs = Arc::new(
            cgroup
                .procs()
                .try_clone()
                .map_err(BedError::io("cloning cgroup fd"))?,
        );
        Ok(Self {
            prefix,
            underlay,
            underlay_ns,
            cgroup,
            cgroup_procs,
            next_index: AtomicU32::new(0),
            closed: false,
        })
    }

    /// The per-run prefix every object of this bed starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay namespace's name (for `ip netns exec`).
    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    pub fn underlay_netns(&self) -> &Netns {
        &self.underlay_ns
    }

    /// The cgroup pod processes run in (attach outbound capture here).
    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    /// A bpffs directory for this bed's pins.
    pub fn pin_root(&self) -> PathBuf {
        Path::new(BPFFS).join(&self.prefix)
    }

    /// Adds a pod named `name` (lowercase letters, digits, dashes) on the bridge.
    pub fn add_pod(&self, name: &str) -> Result<Pod, BedError> {
        check_name(name)?;
        refuse_while_terminating()?;
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        Pod::create(
            &self.underlay,
            BRIDGE,
            name,
            format!("{}-{name}", self.prefix),
            index,
            self.cgroup_procs.clone(),
        )
    }

    /// Makes a pod the way a container runtime does: a fresh network namespace set up by the
    /// node's CNI chain (`runtime`), which also tells the mesh about it. On failure the chain
    /// is torn down again and the namespace removed, as a runtime does.
    pub fn add_pod_via_cni(
        &self,
        name: &str,
        runtime: &CniRuntime,
        pod: &PodRef,
    ) -> Result<Result<Pod, CniFailure>, BedError> {
        check_name(name)?;
        refuse_while_terminating()?;
        let netns_name = format!("{}-{name}", self.prefix);
        ip::ip(&["netns", "add", &netns_name])?;
        // No duplicate address detection: the address is usable as soon as the plugin set it.
        ip::run(
            "ip",
            &[
                "netns",
                "exec",
                &netns_name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        let path = PathBuf::from(format!("/run/netns/{netns_name}"));
        let result = match runtime.add(pod, &path) {
            Ok(r) => r,
            Err(failure) => {
                let _ = runtime.del(pod, &path);
                ip::ip(&["netns", "del", &netns_name])?;
                return Ok(Err(failure));
            }
        };
        let ips = crate::cni::result_ips(&result);
        let v4 = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let v6 = ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let (Some(v4), Some(v6)) = (v4, v6) else {
            return Err(BedError::Command {
                command: format!("CNI ADD for {name}"),
                stderr: format!("the result lacks an IPv4 or IPv6 address: {result}"),
            });
        };
        Pod::from_netns(name, netns_name, v4, v6, self.cgroup_procs.clone()).map(Ok)
    }

    /// Starts capturing every frame that crosses the underlay bridge.
    pub fn sniff(&self) -> Result<Sniffer, BedError> {
        Sniffer::start(&self.underlay_ns, BRIDGE)
    }

    /// Removes everything and reports what, if anything, could not be removed.
    pub fn close(mut self) -> Leftovers {
        self.closed = true;
        cleanup_prefix(&self.prefix)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if !self.closed {
            let left = cleanup_prefix(&self.prefix);
            if !left.is_empty() {
                eprintln!("amesh-testbed: could not remove {left:?}");
            }
        }
    }
}

fn refuse_while_terminating() -> Result<(), BedError> {
    if terminating() {
        return Err(BedError::Command {
            command: "adding a pod".into(),
            stderr: "the run is stopping".into(),
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), BedError> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(BedError::BadName(name.to_string()));
    }
    Ok(())
}

/// Removes every object named with `prefix`: pod processes (via the cgroup), namespaces,
/// the cgroup and the pin root.
fn cleanup_prefix(prefix: &str) -> Leftovers {
    let ours = |name: &str| name == prefix || name.starts_with(&format!("{prefix}-"));
    let cg = amesh_sys::fs::cgroup2_mount().map(|root| root.join(prefix));
    if let Some(cg) = &cg
        && let Err(e) = cgroup::remove(cg)
    {
        eprintln!("amesh-testbed: {e}");
    }
    delete_veths(&format!("{prefix}-ul"));
    for ns in ip::netns_list().into_iter().filter(|n| ours(n)) {
        if let Err(e) = ip::ip(&["netns", "del", &ns]) {
            eprintln!("amesh-testbed: {e}");
        }
    }
    // The mesh's files: configuration, logs, sockets, CNI state (IPAM leases, conf dirs).
    let files = std::env::temp_dir().join(prefix);
    if files.exists()
        && let Err(e) = std::fs::remove_dir_all(&files)
    {
        eprintln!("amesh-testbed: removing {}: {e}", files.display());
    }
    let pins = Path::new(BPFFS).join(prefix);
    if pins.exists() {
        // Unlinking pinned links detaches them; maps and programs go with their last user.
        if let Err(e) = std::fs::remove_dir_all(&pins) {
            eprintln!("amesh-testbed: removing {}: {e}", pins.display());
        }
    }
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != prefix);
    Leftovers {
        netns: ip::netns_list().into_iter().filter(|n| ours(n)).collect(),
        cgroup: cg.filter(|p| p.exists()),
        pins: pins.exists().then_some(pins),
    }
}

/// Deletes the veths in an underlay namespace. Deleting one end removes the pair at once,
/// whereas a namespace is torn down asynchronously after `ip netns del`.
fn delete_veths(underlay: &str) {
    if !ip::netns_list().iter().any(|n| n == underlay) {
        return;
    }
    let Ok(out) = ip::run(
        "ip",
        &["-n", underlay, "-o", "link", "show", "type", "veth"],
    ) else {
        return;
    };
    let names = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n));
    for name in names {
        let _ = ip::ip_in(underlay, &["link", "del", name]);
    }
}

/// Called on Ctrl-C / SIGTERM: stops the mesh's processes and removes the objects of every
/// bed alive in this process.
fn cleanup_live() {
    TERMINATING.store(true, Ordering::SeqCst);
    let children: Vec<u32> = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in children {
        let _ = ip::run("kill", &["-KILL", &pid.to_string()]);
    }
    for file in FILES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_file(file);
    }
    let live: Vec<String> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for prefix in live {
        cleanup_prefix(&prefix);
    }
}

/// Removes objects whose owning process no longer exists (a run killed with SIGKILL).
fn sweep_stale() {
    let mut names: Vec<String> = ip::netns_list();
    if let Some(root) = amesh_sys::fs::cgroup2_mount() {
        names.extend(dir_names(&root));
    }
    names.extend(dir_names(Path::new(BPFFS)));
    let mut prefixes: Vec<String> = names
        .iter()
        .filter(|n| names::is_stale(n))
        .filter_map(|n| {
            let mut parts = n.splitn(4, '-');
            Some(format!(
                "{}-{}-{}",
                parts.next()?,
                parts.next()?,
                parts.next()?
            ))
        })
        .collect();
    prefixes.sort();
    prefixes.dedup();
    for prefix in prefixes {
        eprintln!("amesh-testbed: removing objects left by a killed run: {prefix}");
        cleanup_prefix(&prefix);
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (pins need it).
fn ensure_bpffs() -> Result<(), BedError> {
    if amesh_sys::fs::is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    ip::run("mount", &["-t", "bpf", "bpf", BPFFS]).map(drop)
}
