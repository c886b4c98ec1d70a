//! The L7 row: HTTP request rate and latency measured with h2load (a real peer) from an
//! enrolled client to `amesh-bench serve` in another pod on the other node, in one
//! invocation: with no mesh (to the pod), through the L4 mesh (the service VIP, ztunnel to
//! ztunnel) and through amesh's waypoint (the same VIP, the namespace bound to it), for
//! HTTP/1.1; and HTTP/2 through the waypoint (sent on to the HTTP/1.1 server as HTTP/1.1, so
//! it has no baseline of its own). The waypoint's CPU per 1,000 requests and its peak RSS
//! are read from `/proc` around its runs.

use crate::{procfs, workload::SERVE_PORT};
use amesh_testbed::{
    mesh::{Mesh, PodSpec, pod},
    waypoint::{self, WaypointProcess},
};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

/// The service in front of the bench server, and where the waypoint's own Service sits.
const SERVICE_VIP: &str = "10.96.0.40";
const WAYPOINT_VIP: &str = "10.96.0.41";

/// h2load's figures for one run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub requests: u64,
    pub rps: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// One row of the L7 table.
#[derive(Debug, Clone)]
pub struct Row {
    pub protocol: &'static str,
    pub path: &'static str,
    pub run: Run,
}

#[derive(Debug, Clone)]
pub struct L7 {
    pub rows: Vec<Row>,
    pub seconds: u32,
    pub connections: u32,
    /// Waypoint CPU milliseconds per 1,000 requests, over its runs.
    pub waypoint_cpu_ms_per_1000: f64,
    pub waypoint_peak_rss_kib: u64,
}

/// A duration as h2load prints it (`412us`, `1.62ms`, `1.01s`), in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// Reads h2load's report; fails unless every request succeeded with a 2xx.
pub fn parse(report: &str) -> Result<Run> {
    let line = |prefix: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .with_context(|| format!("no {prefix:?} line in h2load's report:\n{report}"))
    };
    let finished = line("finished in")?;
    let rps = finished
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" req/s")?.parse::<f64>().ok())
        .with_context(|| format!("no req/s in {finished:?}"))?;
    let requests_line = line("requests:")?;
    let count = |what: &str| {
        requests_line
            .split(',')
            .find_map(|p| p.trim().strip_suffix(what)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (done, succeeded) = (count("done"), count("succeeded"));
    let failed = count("failed") + count("errored") + count("timeout");
    ensure!(
        failed == 0 && succeeded == done && done > 0,
        "h2load: {requests_line}"
    );
    // (The status counts include the warm-up's requests; the request counts do not.)
    let codes = line("status codes:")?;
    ensure!(
        codes.contains("0 3xx, 0 4xx, 0 5xx"),
        "h2load: not every answer was 2xx: {codes}"
    );
    // `time for request:  min  max  mean  sd  +/- sd`
    let times: Vec<f64> = line("time for request:")?
        .trim_start()
        .trim_start_matches("time for request:")
        .split_whitespace()
        .filter_map(millis)
        .collect();
    ensure!(times.len() >= 3, "h2load's request times: {times:?}");
    Ok(Run {
        requests: succeeded,
        rps,
        mean_ms: times[2],
        max_ms: times[1],
    })
}

/// One h2load run from `client` to `url`.
fn h2load(mesh: &Mesh, http1: bool, seconds: u32, connections: u32, url: &str) -> Result<Run> {
    let mut cmd = mesh.pod("client").command("h2load");
    if http1 {
        cmd.arg("--h1");
    } else {
        cmd.args(["-m", "8"]);
    }
    cmd.args(["-c", &connections.to_string(), "-t", "1"])
        .args(["-D", &seconds.to_string(), "--warm-up-time", "1"])
        .arg(url);
    let out = cmd.output().context("running h2load in the client pod")?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "h2load {url}: {}\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&report)
}

fn specs() -> Vec<PodSpec> {
    vec![
        pod("client", "bench", "node1"),
        pod("server", "bench", "node2"),
        PodSpec {
            tcp: true,
            ..pod("waypoint", "bench", "node2")
        },
    ]
}

/// The Service in front of the bench server (port 80 → `amesh-bench serve`).
fn service_yaml() -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bench-http, namespace: bench}}\nspec: {{clusterIP: {SERVICE_VIP}, selector: {{app: server}}, ports: [{{port: 80, targetPort: {SERVE_PORT}}}]}}\n"
    )
}

/// Runs the three paths; `quick` shortens every run.
pub fn run(quick: bool) -> Result<L7> {
    let (seconds, connections) = if quick { (2, 4) } else { (10, 8) };
    let mut mesh = Mesh::try_build(&specs()).context("building the L7 pods")?;
    let source = std::fs::read_to_string(mesh.source_path()).context("the source")?;
    std::fs::write(mesh.source_path(), format!("{source}{}", service_yaml()))
        .context("writing the source")?;
    let _server = crate::workload::start_servers(mesh.pod("server"))?;
    let pod_url = format!("http://{}:{SERVE_PORT}/", mesh.pod("server").ipv4());
    let vip_url = format!("http://{SERVICE_VIP}/");
    let mut rows = Vec::new();
    let mut row = |protocol, path, run| {
        rows.push(Row {
            protocol,
            path,
            run,
        })
    };

    row(
        "HTTP/1.1",
        "no mesh",
        h2load(&mesh, true, seconds, connections, &pod_url)?,
    );

    mesh.try_start_control_plane()
        .context("the control plane")?;
    let token = mesh.node_token_path();
    mesh.try_start_fed_by_control_plane(&token)
        .context("the nodes")?;
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)?;
    }
    // The VIP is a service only ztunnel knows; the pods route it on-link (eBPF rewrites it).
    row(
        "HTTP/1.1",
        "L4 mesh",
        h2load(&mesh, true, seconds, connections, &vip_url)?,
    );

    let source = std::fs::read_to_string(mesh.source_path()).context("the source")?;
    std::fs::write(
        mesh.source_path(),
        waypoint::bind_namespace(&source, "bench", "waypoint", WAYPOINT_VIP),
    )
    .context("binding the namespace")?;
    let w = WaypointProcess::try_start(&mesh, "waypoint", "bench", "waypoint")
        .context("the waypoint")?;
    waypoint::try_wait_bound(
        &mesh,
        "node1",
        "bench-http.bench.svc.cluster.local",
        "bench/waypoint.bench.svc.cluster.local",
    )?;
    let pid = w.daemon.child.id();
    let tck = procfs::clock_ticks_per_second() as f64;
    procfs::reset_peak_rss(pid)?;
    let cpu_before = procfs::cpu_ticks(pid)?;
    let h1 = h2load(&mesh, true, seconds, connections, &vip_url)?;
    let h2 = h2load(&mesh, false, seconds, connections, &vip_url)?;
    let cpu_s = (procfs::cpu_ticks(pid)? - cpu_before) as f64 / tck;
    let peak = procfs::peak_rss_kib(pid)?;
    // h2load's warm-up requests are served too: count what the waypoint counted.
    let counted = waypoint::requests(&w.try_metrics()?, &["response_code=\"200\""]);
    if counted < (h1.requests + h2.requests) as f64 {
        bail!(
            "the waypoint counted {counted} requests, h2load {} : not all went through it",
            h1.requests + h2.requests
        );
    }
    row("HTTP/1.1", "waypoint", h1);
    row("HTTP/2", "waypoint", h2);
    drop(w);
    let left = mesh.close();
    ensure!(left.is_empty(), "the L7 run left behind: {left:?}");
    Ok(L7 {
        rows,
        seconds,
        connections,
        waypoint_cpu_ms_per_1000: cpu_s * 1000.0 / counted * 1000.0,
        waypoint_peak_rss_kib: peak,
    })
}

impl L7 {
    fn base(&self) -> Option<&Run> {
        self.rows
            .iter()
            .find(|r| r.protocol == "HTTP/1.1" && r.path == "no mesh")
            .map(|r| &r.run)
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "L7: h2load, {} connections, {} s per run (HTTP/2: 8 streams per connection)\n\
             {:<9} {:<10} {:>10} {:>9} {:>12} {:>10}\n",
            self.connections,
            self.seconds,
            "protocol",
            "path",
            "req/s",
            "vs none",
            "mean ms",
            "max ms"
        );
        for r in &self.rows {
            let ratio = match (self.base(), r.protocol) {
                (Some(b), "HTTP/1.1") => format!("{:.2}x", r.run.rps / b.rps),
                _ => "-".into(),
            };
            t += &format!(
                "{:<9} {:<10} {:>10.0} {:>9} {:>12.3} {:>10.2}\n",
                r.protocol, r.path, r.run.rps, ratio, r.run.mean_ms, r.run.max_ms
            );
        }
        t += &format!(
            "waypoint: {:.1} ms CPU per 1,000 requests, peak RSS {:.1} MiB\n",
            self.waypoint_cpu_ms_per_1000,
            self.waypoint_peak_rss_kib as f64 / 1024.0
        );
        t
    }

    pub fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "connections": self.connections,
            "rows": self.rows.iter().map(|r| json!({
                "protocol": r.protocol,
                "path": r.path,
                "requests": r.run.requests,
                "requests_per_second": r.run.rps,
                "mean_ms": r.run.mean_ms,
                "max_ms": r.run.max_ms,
            })).collect::<Vec<_>>(),
            "waypoint_cpu_ms_per_1000_requests": self.waypoint_cpu_ms_per_1000,
            "waypoint_peak_rss_kib": self.waypoint_peak_rss_kib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "starting benchmark...
finished in 2.00s, 4310.50 req/s, 4.48MB/s
requests: 8621 total, 8621 started, 8621 done, 8621 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 8621 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 8.96MB (9393542) total, 1.21MB (1267287) headers (space savings 0.00%), 8.42MB (8827904) data
                     min         max         mean         sd        +/- sd
time for request:      412us     10.23ms       921us       300us    85.00%
";

    #[test]
    fn h2loads_report_is_read_and_failures_are_refused() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 8621);
        assert!((r.rps - 4310.5).abs() < 1e-9);
        assert!((r.mean_ms - 0.921).abs() < 1e-9, "{}", r.mean_ms);
        assert!((r.max_ms - 10.23).abs() < 1e-9);
        let failed = REPORT.replace("8621 succeeded, 0 failed", "8600 succeeded, 21 failed");
        assert!(parse(&failed).is_err());
        let not_2xx = REPORT.replace(
            "8621 2xx, 0 3xx, 0 4xx, 0 5xx",
            "8000 2xx, 0 3xx, 0 4xx, 621 5xx",
        );
        assert!(parse(&not_2xx).is_err());
        assert_eq!(millis("1.5s"), Some(1500.0));
    }
}
