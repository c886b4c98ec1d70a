//! What the bench measures: the workloads, their settings, the figures each yields, and how
//! one repetition of each runs inside the pods.

use crate::load::Mode;
use amesh_testbed::{Pod, PodProcess};
use anyhow::{Context, Result, bail, ensure};
use std::{net::SocketAddr, time::Duration};

/// The iperf3 server's port in the server pod.
pub const IPERF_PORT: u16 = 5201;
/// `amesh-bench serve`'s port in the server pod.
pub const SERVE_PORT: u16 = 7000;

/// How long and how hard each measurement runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub reps: usize,
    /// Seconds run and thrown away before each measured window.
    pub warmup_s: u32,
    pub iperf_s: u32,
    pub latency_s: f64,
    /// Aggregate request rate of the latency runs.
    pub rate: f64,
    /// Keep-alive connections of the latency runs.
    pub connections: usize,
    pub connect_s: f64,
    /// Concurrent connectors of the connection-rate run.
    pub concurrency: usize,
}

impl Settings {
    pub fn full() -> Self {
        Self {
            quick: false,
            reps: 3,
            warmup_s: 1,
            iperf_s: 5,
            latency_s: 5.0,
            rate: 1000.0,
            connections: 4,
            connect_s: 5.0,
            concurrency: 8,
        }
    }

    /// A smoke run: one short repetition of everything.
    pub fn quick() -> Self {
        Self {
            quick: true,
            reps: 1,
            warmup_s: 0,
            iperf_s: 1,
            latency_s: 1.0,
            rate: 500.0,
            connections: 2,
            connect_s: 1.0,
            concurrency: 4,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "quick": self.quick,
            "repetitions": self.reps,
            "warmup_seconds": self.warmup_s,
            "iperf3_seconds": self.iperf_s,
            "latency_seconds": self.latency_s,
            "latency_rate_per_second": self.rate,
            "latency_connections": self.connections,
            "connect_seconds": self.connect_s,
            "connect_concurrency": self.concurrency,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// iperf3 with this many parallel streams.
    Iperf(u32),
    /// Latency at a fixed rate over keep-alive connections.
    Latency(Mode),
    /// New connections per second.
    Connect,
}

/// One figure a workload yields.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub key: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const fn metric(key: &'static str, name: &'static str, unit: &'static str, up: bool) -> Metric {
    Metric {
        key,
        name,
        unit,
        higher_is_better: up,
    }
}

pub const ALL: [Workload; 5] = [
    Workload::Iperf(1),
    Workload::Iperf(8),
    Workload::Latency(Mode::TcpPingpong),
    Workload::Latency(Mode::Http1),
    Workload::Connect,
];

impl Workload {
    pub fn key(self) -> &'static str {
        match self {
            Self::Iperf(1) => "throughput_1_stream",
            Self::Iperf(_) => "throughput_8_streams",
            Self::Latency(Mode::Http1) => "latency_http1",
            Self::Latency(_) => "latency_tcp_pingpong",
            Self::Connect => "connections_per_second",
        }
    }

    pub fn title(self, s: &Settings) -> String {
        match self {
            Self::Iperf(1) => "iperf3, 1 stream".into(),
            Self::Iperf(n) => format!("iperf3, {n} streams"),
            Self::Latency(Mode::Http1) => format!("HTTP/1.1 1 KB at {} req/s", s.rate),
            Self::Latency(_) => format!("TCP 1-byte ping-pong at {} req/s", s.rate),
            Self::Connect => format!("new connections, {} at a time", s.concurrency),
        }
    }

    pub fn metrics(self) -> Vec<Metric> {
        match self {
            Self::Iperf(1) => vec![metric("gbps", "throughput, 1 stream", "Gbit/s", true)],
            Self::Iperf(_) => vec![metric("gbps", "throughput, 8 streams", "Gbit/s", true)],
            Self::Latency(Mode::Http1) => vec![
                metric("p50_us", "HTTP/1.1 1 KB p50", "µs", false),
                metric("p90_us", "HTTP/1.1 1 KB p90", "µs", false),
                metric("p99_us", "HTTP/1.1 1 KB p99", "µs", false),
            ],
            Self::Latency(_) => vec![
                metric("p50_us", "TCP ping-pong p50", "µs", false),
                metric("p90_us", "TCP ping-pong p90", "µs", false),
                metric("p99_us", "TCP ping-pong p99", "µs", false),
            ],
            Self::Connect => vec![metric("per_second", "new connections", "conn/s", true)],
        }
    }

    /// Runs one repetition from `client` to `server`; the figures in [`Self::metrics`] order.
    pub fn run_once(self, s: &Settings, client: &Pod, server: SocketAddr) -> Result<Vec<f64>> {
        match self {
            Self::Iperf(streams) => iperf(s, client, server, streams).map(|g| vec![g]),
            Self::Latency(mode) => {
                let v = load(s, client, server, mode)?;
                let p = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
                Ok(vec![p("p50_us")?, p("p90_us")?, p("p99_us")?])
            }
            Self::Connect => {
                let v = load(s, client, server, Mode::Connect)?;
                let rate = v["per_second"].as_f64().unwrap_or(0.0);
                ensure!(rate > 0.0, "no connection completed: {v}");
                Ok(vec![rate])
            }
        }
    }
}

/// Runs iperf3 in `client` against the server pod; the received throughput in Gbit/s.
fn iperf(s: &Settings, client: &Pod, server: SocketAddr, streams: u32) -> Result<f64> {
    let mut cmd = client.command("iperf3");
    cmd.args([
        "-c",
        &server.ip().to_string(),
        "-p",
        &IPERF_PORT.to_string(),
    ])
    .args(["-t", &s.iperf_s.to_string(), "-O", &s.warmup_s.to_string()])
    .args(["-P", &streams.to_string(), "-J"]);
    let limit = Duration::from_secs(u64::from(s.iperf_s + s.warmup_s) + 30);
    let p = client.spawn(cmd)?;
    let (status, lines) = p.finish(limit).map_err(anyhow::Error::msg)?;
    let out = lines.join("\n");
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("iperf3 ({status}) printed no JSON: {out}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    ensure!(
        status.success() && bps > 0.0,
        "iperf3 ({status}) moved no data"
    );
    Ok(bps / 1e9)
}

/// Runs `amesh-bench load` in `client`; its JSON summary, checked for errors.
fn load(s: &Settings, client: &Pod, server: SocketAddr, mode: Mode) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding amesh-bench itself")?;
    let (secs, conns, name) = match mode {
        Mode::Connect => (s.connect_s, s.concurrency, "connect"),
        Mode::Http1 => (s.latency_s, s.connections, "http1"),
        Mode::TcpPingpong => (s.latency_s, s.connections, "tcp-pingpong"),
    };
    let target = SocketAddr::new(server.ip(), SERVE_PORT);
    let mut cmd = client.command(exe);
    cmd.args(["load", "--mode", name, "--target", &target.to_string()])
        .args(["--rate", &s.rate.to_string()])
        .args(["--connections", &conns.to_string()])
        .args(["--duration", &secs.to_string()])
        .args(["--warmup", &s.warmup_s.to_string()]);
    let p = client.spawn(cmd)?;
    let limit = Duration::from_secs_f64(secs + f64::from(s.warmup_s) + 30.0);
    let label = p.label().to_string();
    let (status, lines) = p.finish(limit).map_err(anyhow::Error::msg)?;
    let last = lines.last().map(String::as_str).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("{label} ({status}) printed no result: {lines:?}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("{name} load: {e}");
    }
    let errors = v["errors"].as_u64().unwrap_or(0);
    let requests = v["requests"].as_u64().unwrap_or(0);
    ensure!(
        errors == 0,
        "{errors} of {} {name} requests failed, the first: {}",
        errors + requests,
        v["first_error"]
    );
    ensure!(requests > 0, "no {name} request completed: {v}");
    Ok(v)
}

/// Starts the servers in `server`: iperf3 and `amesh-bench serve`, waiting until both listen.
pub fn start_servers(server: &Pod) -> Result<Vec<PodProcess>> {
    let mut iperf = server.command("iperf3");
    iperf.args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"]);
    let iperf = server.spawn(iperf)?;
    wait_line(&iperf, "listening")?;
    let exe = std::env::current_exe().context("finding amesh-bench itself")?;
    let mut serve = server.command(exe);
    serve.args(["serve", "--port", &SERVE_PORT.to_string()]);
    let serve = server.spawn(serve)?;
    wait_line(&serve, "ready")?;
    Ok(vec![iperf, serve])
}

fn wait_line(p: &PodProcess, needle: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match p.next_line(Duration::from_millis(200)) {
            Some(l) if l.contains(needle) => return Ok(()),
            _ => {}
        }
    }
    bail!("{} did not start: {}", p.label(), p.stderr())
}
