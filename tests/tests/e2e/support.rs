//! Shared pieces of the end-to-end tests: a bed with capture loaded, and short forms of the
//! test bed's probe runners and ztunnel stand-ins that fail the test with a clear message.

use amesh_ebpf_loader::{Capture, CaptureConfig, EnrollRequest, EnrolledPod};
use amesh_testbed::{
    Pod, PodProcess, TestBed, probe,
    probe::{ConnectResult, Connected},
    standin::{StandIn, orig_lookup},
};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::Path,
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

pub fn request<'a>(netns: &'a Path, addrs: &'a [IpAddr]) -> EnrollRequest<'a> {
    EnrollRequest {
        netns,
        addresses: addrs,
        excluded_outbound_ports: &[],
        excluded_inbound_ports: &[],
        bypass_inbound: false,
        dns_capture: true,
        listeners: None,
    }
}

pub fn serve(pod: &Pod, name: &str, addrs: &[SocketAddr]) -> PodProcess {
    probe::serve(Path::new(PROBE), pod, name, addrs).expect("start server")
}

pub fn connect(pod: &Pod, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult> {
    probe::connect(Path::new(PROBE), pod, extra, targets).expect("run client")
}

/// The single connection's successful outcome, or a panic naming the error.
pub fn connect_one(pod: &Pod, extra: &[&str], target: SocketAddr) -> Connected {
    connect(pod, extra, &[target])
        .remove(0)
        .outcome
        .unwrap_or_else(|e| panic!("connect to {target} failed: {e}"))
}

pub fn served_by(c: &Connected) -> &str {
    c.served_by()
}

pub fn served_local(c: &Connected) -> SocketAddr {
    c.served_local().expect("local= in reply")
}

/// ztunnel's outbound listeners of a pod: 127.0.0.1:15001 and [::1]:15001.
pub fn outbound_listeners(bed: &Bed, pod: &str, pod_id: u32) -> (StandIn, StandIn) {
    let lookup = orig_lookup(&bed.bed.pin_root(), pod_id).expect("open pinned maps");
    let p = bed.pod(pod);
    let start = |addr: &str, l| {
        StandIn::start(p, "outbound", addr.parse().expect("addr"), Some(l)).expect("listener")
    };
    (
        start("127.0.0.1:15001", lookup.clone()),
        start("[::1]:15001", lookup),
    )
}

/// ztunnel's inbound listeners of a pod (dual-stack), registered with the capture.
pub fn inbound_listeners(bed: &mut Bed, pod: &str, pod_id: u32) -> (StandIn, StandIn) {
    let p = bed.pods.iter().find(|x| x.name() == pod).expect("pod");
    let hbone =
        StandIn::start(p, "hbone", "[::]:15008".parse().expect("addr"), None).expect("listener");
    let plain = StandIn::start(p, "plaintext", "[::]:15006".parse().expect("addr"), None)
        .expect("listener");
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
