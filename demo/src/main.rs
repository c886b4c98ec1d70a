//! `cargo xtask demo`: builds pods out of network namespaces on this machine, loads amesh's
//! eBPF capture, and walks through what it does, verifying every step. Until ztunnel lands
//! the pods' "ztunnel" is a stand-in listener that reports where each connection arrived.
//!
//! Exits 0 only if every step passed; removes everything it made, also on Ctrl-C.
#![forbid(unsafe_code)]

use amesh_ebpf_loader::{Capture, CaptureConfig, EnrollRequest};
use amesh_testbed::{
    Pod, TestBed, probe,
    probe::Connected,
    sniff::{self, TcpSegment},
    standin::{StandIn, orig_lookup},
};
use anyhow::{Context, Result, anyhow, ensure};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::PathBuf,
};

const APP_PORT: u16 = 8080;

struct Step {
    name: &'static str,
    outcome: Result<String>,
}

struct Demo {
    probe: PathBuf,
    bed: TestBed,
    client: Pod,
    server: Pod,
    outsider: Pod,
}

fn main() -> std::process::ExitCode {
    println!("amesh demo: eBPF traffic capture in network-namespace pods\n");
    let steps = match run() {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("demo: could not set up: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("\n{:<52} {:<6} evidence", "step", "result");
    println!("{}", "-".repeat(110));
    let mut failed = 0;
    for s in &steps {
        let (result, evidence) = match &s.outcome {
            Ok(e) => ("ok", e.clone()),
            Err(e) => {
                failed += 1;
                ("FAIL", format!("{e:#}"))
            }
        };
        println!("{:<52} {:<6} {evidence}", s.name, result);
    }
    println!();
    if failed == 0 {
        println!("all {} steps passed", steps.len());
        std::process::ExitCode::SUCCESS
    } else {
        println!("{failed} of {} steps failed", steps.len());
        std::process::ExitCode::FAILURE
    }
}

/// Stand-in ztunnel listeners registered for the demo's enrolled pods.
struct Enrolled {
    client_id: u32,
    server_id: u32,
    _listeners: [StandIn; 4],
}

fn run() -> Result<Vec<Step>> {
    let demo = Demo::build()?;
    let _app = probe::serve(
        &demo.probe,
        &demo.server,
        "server-app",
        &[SocketAddr::from(([0; 16], APP_PORT))],
    )?;
    let mut steps = Vec::new();
    let mut step = |name, outcome: Result<String>| {
        let mark = if outcome.is_ok() { "ok  " } else { "FAIL" };
        println!("[{mark}] {name}");
        steps.push(Step { name, outcome });
    };
    step(
        "before enrollment: plaintext crosses the wire",
        demo.plaintext_before(),
    );
    let config = CaptureConfig {
        pin_root: demo.bed.pin_root(),
        cgroup: demo.bed.cgroup_path().to_path_buf(),
        debug_logs: false,
    };
    let mut capture = Capture::load_or_adopt(&config)?;
    println!(
        "• loaded connect4/connect6/sock_ops on {} and pinned under {}",
        config.cgroup.display(),
        config.pin_root.display()
    );
    let enrolled = demo.enroll_both(&mut capture, &config)?;
    step(
        "outbound connects land on ztunnel in the pod",
        demo.outbound_captured(),
    );
    step(
        "inbound connections land on ztunnel's listeners",
        demo.inbound_captured(),
    );
    step(
        "ztunnel's own marked sockets are not re-captured",
        demo.marked_not_captured(),
    );
    step(
        "per-pod counters count",
        counters(&capture, enrolled.client_id, enrolled.server_id),
    );
    step(
        "unenroll restores the direct path",
        demo.unenrolled(&mut capture, enrolled.client_id),
    );
    step(
        "teardown removes programs, links and pins",
        teardown(capture, &config.pin_root),
    );
    drop(enrolled);
    let left = demo.bed.close();
    let cleaned = if left.is_empty() {
        Ok("all removed".into())
    } else {
        Err(anyhow!("left: {left:?}"))
    };
    step("nothing left behind (netns, cgroup, pins)", cleaned);
    Ok(steps)
}

impl Demo {
    /// Checks the prerequisites and builds the pods.
    fn build() -> Result<Self> {
        let probe = std::env::current_exe()?
            .parent()
            .context("demo binary has a directory")?
            .join("amesh-probe");
        ensure!(
            probe.is_file(),
            "{} is missing: run the demo with `cargo xtask demo`",
            probe.display()
        );
        ensure!(
            amesh_sys::fs::euid() == 0,
            "the demo builds network namespaces and loads eBPF: run it as root"
        );
        let bed = TestBed::new()?;
        println!(
            "• built a test network under prefix {} (underlay bridge br0)",
            bed.prefix()
        );
        let demo = Self {
            client: bed.add_pod("client")?,
            server: bed.add_pod("server")?,
            outsider: bed.add_pod("outsider")?,
            probe,
            bed,
        };
        for p in [&demo.client, &demo.server, &demo.outsider] {
            println!("  pod {:<9} {:<12} {}", p.name(), p.ipv4(), p.ipv6());
        }
        Ok(demo)
    }

    /// Enrolls client and server and registers stand-in ztunnel listeners for them.
    fn enroll_both(&self, capture: &mut Capture, config: &CaptureConfig) -> Result<Enrolled> {
        let client_id = self.enroll(capture, &self.client)?;
        let server_id = self.enroll(capture, &self.server)?;
        let lookup = orig_lookup(&config.pin_root, client_id)?;
        let listeners = [
            StandIn::start(
                &self.client,
                "ztunnel-outbound",
                "127.0.0.1:15001".parse()?,
                Some(lookup.clone()),
            )?,
            StandIn::start(
                &self.client,
                "ztunnel-outbound",
                "[::1]:15001".parse()?,
                Some(lookup),
            )?,
            StandIn::start(&self.server, "ztunnel-hbone", "[::]:15008".parse()?, None)?,
            StandIn::start(&self.server, "ztunnel-inbound", "[::]:15006".parse()?, None)?,
        ];
        capture
            .maps()
            .register_listeners(server_id, listeners[2].as_fd(), listeners[3].as_fd())?;
        println!(
            "• enrolled client (pod {client_id}) and server (pod {server_id}); stand-in ztunnel listeners registered"
        );
        Ok(Enrolled {
            client_id,
            server_id,
            _listeners: listeners,
        })
    }

    fn connect(&self, from: &Pod, extra: &[&str], to: SocketAddr) -> Result<Connected> {
        let r = probe::connect(&self.probe, from, extra, &[to])?.remove(0);
        r.outcome
            .map_err(|e| anyhow!("{} -> {to}: {e}", from.name()))
    }

    fn enroll(&self, capture: &mut Capture, pod: &Pod) -> Result<u32> {
        let (path, addrs) = (pod.netns_path(), pod.addresses());
        let req = EnrollRequest {
            netns: &path,
            addresses: &addrs,
            excluded_outbound_ports: &[],
            excluded_inbound_ports: &[],
            bypass_inbound: false,
            listeners: None,
        };
        Ok(capture.enroll(&req)?.pod_id)
    }

    fn server_app(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, APP_PORT)
    }

    fn plaintext_before(&self) -> Result<String> {
        let target = self.server_app(self.server.ipv4().into());
        let sniffer = self.bed.sniff()?;
        let c = self.connect(&self.client, &[], target)?;
        let segments = sniffer.stop();
        ensure!(
            c.served_by() == "server-app",
            "answered by {}",
            c.served_by()
        );
        ensure!(
            sniff::any_payload_contains(&segments, target.to_string().as_bytes()),
            "the request was not seen on the bridge"
        );
        Ok(format!("client's request to {target} readable on br0"))
    }

    fn outbound_captured(&self) -> Result<String> {
        let sniffer = self.bed.sniff()?;
        let mut seen = Vec::new();
        for ip in [
            IpAddr::from(self.server.ipv4()),
            IpAddr::from(self.server.ipv6()),
        ] {
            let target = self.server_app(ip);
            let c = self.connect(&self.client, &[], target)?;
            ensure!(
                c.served_by() == "ztunnel-outbound",
                "{target} answered by {}",
                c.served_by()
            );
            ensure!(
                c.orig() == Some(target.to_string().as_str()),
                "original destination {:?}",
                c.orig()
            );
            seen.push(format!("{target} -> {} (orig {target})", c.peer));
        }
        let syns = syns_to(&sniffer.stop(), APP_PORT);
        ensure!(syns == 0, "{syns} SYNs to port {APP_PORT} crossed the wire");
        Ok(format!("{}; 0 packets on the wire", seen.join(", ")))
    }

    fn inbound_captured(&self) -> Result<String> {
        let app = self.server_app(self.server.ipv4().into());
        let c = self.connect(&self.outsider, &[], app)?;
        ensure!(
            c.served_by() == "ztunnel-inbound",
            "{app} answered by {}",
            c.served_by()
        );
        ensure!(
            c.served_local() == Some(app),
            "local address {:?}",
            c.served_local()
        );
        let hb = SocketAddr::new(self.server.ipv4().into(), 15008);
        let h = self.connect(&self.outsider, &[], hb)?;
        ensure!(
            h.served_by() == "ztunnel-hbone",
            "{hb} answered by {}",
            h.served_by()
        );
        Ok(format!(
            "{app} -> 15006 listener (local {app}); {hb} -> HBONE listener"
        ))
    }

    fn marked_not_captured(&self) -> Result<String> {
        let target = self.server_app(self.server.ipv4().into());
        let c = self.connect(&self.client, &["--mark", "0x539"], target)?;
        // Not redirected to the client's outbound listener; it reaches the server pod, where
        // inbound capture hands it to ztunnel.
        ensure!(
            c.served_by() == "ztunnel-inbound",
            "answered by {}",
            c.served_by()
        );
        Ok("SO_MARK 0x539 socket went straight to the server pod".into())
    }

    fn unenrolled(&self, capture: &mut Capture, client_id: u32) -> Result<String> {
        ensure!(capture.unenroll(client_id)?, "client was not enrolled");
        let target = self.server_app(self.server.ipv4().into());
        let c = self.connect(&self.client, &[], target)?;
        ensure!(
            c.served_by() == "ztunnel-inbound",
            "answered by {}",
            c.served_by()
        );
        Ok("client's connects go out directly again".into())
    }
}

fn syns_to(segments: &[TcpSegment], port: u16) -> usize {
    segments
        .iter()
        .filter(|s| s.is_syn() && s.dst.port() == port)
        .count()
}

fn counters(capture: &Capture, client: u32, server: u32) -> Result<String> {
    let c = capture.counters(client)?;
    let s = capture.counters(server)?;
    ensure!(
        c.outbound_captured >= 2,
        "client outbound_captured = {}",
        c.outbound_captured
    );
    ensure!(
        s.inbound_plaintext >= 1 && s.inbound_hbone >= 1,
        "server counters {s:?}"
    );
    Ok(format!(
        "client: {} captured, {} passed; server: {} plaintext + {} HBONE in",
        c.outbound_captured, c.outbound_passthrough, s.inbound_plaintext, s.inbound_hbone
    ))
}

fn teardown(capture: Capture, pin_root: &std::path::Path) -> Result<String> {
    capture.teardown()?;
    ensure!(!pin_root.exists(), "{} still exists", pin_root.display());
    Ok(format!("{} removed", pin_root.display()))
}
