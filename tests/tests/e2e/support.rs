//! Shared pieces of the end-to-end tests: a bed with capture loaded, probe runs inside pods,
//! and stand-ins for ztunnel's in-pod listeners that report what the capture delivered.

use amesh_ebpf_loader::{
    Capture, CaptureConfig, CaptureMaps, EnrollRequest, EnrolledPod, PinLayout,
};
use amesh_testbed::{
    Pod, PodProcess, TestBed,
    probe::{ConnectResult, Connected, reply_field},
};
use socket2::{Domain, Socket, Type};
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub const PROBE: &str = env!("CARGO_BIN_EXE_amesh-probe");
pub const APP_PORT: u16 = 8080;

/// A bed with the named pods and the capture programs loaded for it.
pub struct Bed {
    pub capture: Capture,
    pub pods: Vec<Pod>,
    // Dropped last (fields drop in order): everything above lives inside it.
    pub bed: TestBed,
}

impl Bed {
    pub fn new(pods: &[&str]) -> Self {
        amesh_testbed::require_root();
        let bed = TestBed::new().expect("test bed");
        let pods = pods.iter().map(|p| bed.add_pod(p).expect("pod")).collect();
        let capture = Capture::load_or_adopt(&capture_config(&bed)).expect("load capture programs");
        Self { capture, pods, bed }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .expect("pod by name")
    }

    /// Enrolls a pod with its addresses and no exclusions, without listeners.
    pub fn enroll(&mut self, name: &str) -> EnrolledPod {
        let pod = self
            .pods
            .iter()
            .find(|p| p.name() == name)
            .expect("pod by name");
        let (addrs, path) = (pod.addresses(), pod.netns_path());
        self.capture
            .enroll(&request(&path, &addrs))
            .expect("enroll")
    }
}

pub fn capture_config(bed: &TestBed) -> CaptureConfig {
    CaptureConfig {
        pin_root: bed.pin_root(),
        cgroup: bed.cgroup_path().to_path_buf(),
        debug_logs: false,
    }
}

pub fn request<'a>(netns: &'a std::path::Path, addrs: &'a [IpAddr]) -> EnrollRequest<'a> {
    EnrollRequest {
        netns,
        addresses: addrs,
        excluded_outbound_ports: &[],
        excluded_inbound_ports: &[],
        bypass_inbound: false,
        listeners: None,
    }
}

/// Starts `amesh-probe serve` in `pod` on `addrs` and waits until it listens.
pub fn serve(pod: &Pod, name: &str, addrs: &[SocketAddr]) -> PodProcess {
    let mut cmd = pod.command(PROBE);
    cmd.args(["serve", "--name", name])
        .args(addrs.iter().map(|a| a.to_string()));
    let p = pod.spawn(cmd).expect("start server");
    let line = p.next_line(Duration::from_secs(10));
    assert_eq!(
        line.as_deref(),
        Some("ready"),
        "server in {} did not start: {}",
        pod.name(),
        p.stderr()
    );
    p
}

/// Runs `amesh-probe connect` in `pod` and returns one result per target, in order.
pub fn connect(pod: &Pod, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult> {
    let mut cmd = pod.command(PROBE);
    cmd.arg("connect")
        .args(extra)
        .args(targets.iter().map(|t| t.to_string()));
    let p = pod.spawn(cmd).expect("start client");
    let stderr_hint = p.label().to_string();
    let (_, lines) = p.finish(Duration::from_secs(60)).expect("client finished");
    let results: Vec<ConnectResult> = lines
        .iter()
        .filter_map(|l| ConnectResult::parse(l))
        .collect();
    assert_eq!(
        results.len(),
        targets.len(),
        "{stderr_hint} printed: {lines:?}"
    );
    results
}

/// The single connection's successful outcome, or a panic naming the error.
pub fn connect_one(pod: &Pod, extra: &[&str], target: SocketAddr) -> Connected {
    connect(pod, extra, &[target])
        .remove(0)
        .outcome
        .unwrap_or_else(|e| panic!("connect to {target} failed: {e}"))
}

/// Who answered a connection (`served-by=` of the reply).
pub fn served_by(c: &Connected) -> &str {
    reply_field(&c.reply, "served-by").unwrap_or("")
}

/// The `local=` an answering server saw (the connection's destination at the server).
pub fn served_local(c: &Connected) -> SocketAddr {
    reply_field(&c.reply, "local")
        .and_then(|l| l.parse().ok())
        .expect("local= in reply")
}

/// A stand-in for one of ztunnel's listeners: accepts, answers like `amesh-probe serve`, and
/// for the outbound listener adds `orig=` (the original destination read from the maps).
pub struct FakeListener {
    pub socket: Arc<Socket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the outbound stand-in uses to recover original destinations.
pub struct OrigLookup {
    pub maps: Mutex<CaptureMaps>,
    pub pod_id: u32,
}

impl FakeListener {
    /// Binds `addr` inside `pod` (dual-stack when it is `[::]`) and serves until dropped.
    pub fn start(pod: &Pod, name: &str, addr: SocketAddr, orig: Option<Arc<OrigLookup>>) -> Self {
        let socket = pod
            .run(|| -> std::io::Result<Socket> {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                if addr.is_ipv6() {
                    s.set_only_v6(!addr.ip().is_unspecified())?;
                }
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .expect("enter pod")
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", pod.name()));
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag, name) = (socket.clone(), stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let listener: TcpListener = s.try_clone().expect("clone listener").into();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let (name, orig) = (name.clone(), orig.clone());
                        std::thread::spawn(move || answer(conn, peer, &name, orig.as_deref()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            socket,
            stop,
            thread: Some(thread),
        }
    }
}

impl AsFd for FakeListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for FakeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, peer: SocketAddr, name: &str, orig: Option<&OrigLookup>) {
    let _ = conn.set_nonblocking(false);
    let local = conn
        .local_addr()
        .map(canonical)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let orig = orig.map(|o| {
        let found = o
            .maps
            .lock()
            .expect("maps")
            .take_original_dst(o.pod_id, canonical(peer));
        match found {
            Ok(Some(a)) => a.to_string(),
            Ok(None) => "none".to_string(),
            Err(e) => format!("error:{e}"),
        }
    });
    let mut line = String::new();
    let _ = BufReader::new(&conn).read_line(&mut line);
    let orig = orig.map(|o| format!(" orig={o}")).unwrap_or_default();
    let _ = (&conn).write_all(
        format!(
            "served-by={name}{orig} local={local} line={}\n",
            line.trim_end()
        )
        .as_bytes(),
    );
}

/// IPv4-mapped addresses (from dual-stack sockets) as plain IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Opens the maps from the pins the way ztunnel does.
pub fn orig_lookup(bed: &TestBed, pod_id: u32) -> Arc<OrigLookup> {
    let maps = CaptureMaps::open_pinned(&PinLayout::new(bed.pin_root())).expect("open pinned maps");
    Arc::new(OrigLookup {
        maps: Mutex::new(maps),
        pod_id,
    })
}

/// ztunnel's outbound listeners of a pod: 127.0.0.1:15001 and [::1]:15001.
pub fn outbound_listeners(bed: &Bed, pod: &str, pod_id: u32) -> (FakeListener, FakeListener) {
    let lookup = orig_lookup(&bed.bed, pod_id);
    let p = bed.pod(pod);
    (
        FakeListener::start(
            p,
            "outbound",
            "127.0.0.1:15001".parse().expect("addr"),
            Some(lookup.clone()),
        ),
        FakeListener::start(
            p,
            "outbound",
            "[::1]:15001".parse().expect("addr"),
            Some(lookup),
        ),
    )
}

/// ztunnel's inbound listeners of a pod (dual-stack), registered with the capture.
pub fn inbound_listeners(bed: &mut Bed, pod: &str, pod_id: u32) -> (FakeListener, FakeListener) {
    let p = bed.pods.iter().find(|x| x.name() == pod).expect("pod");
    let hbone = FakeListener::start(p, "hbone", "[::]:15008".parse().expect("addr"), None);
    let plain = FakeListener::start(p, "plaintext", "[::]:15006".parse().expect("addr"), None);
    bed.capture
        .maps()
        .register_listeners(pod_id, hbone.as_fd(), plain.as_fd())
        .expect("register listeners");
    (hbone, plain)
}

pub fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ipv4()), port)
}

pub fn v6(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(pod.ipv6()), port)
}
