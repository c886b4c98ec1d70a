//! The run: two pods on two nodes, every workload without the mesh, then the same with
//! amesh (capture and a ztunnel per node), with ztunnel's CPU and peak RSS sampled around
//! every repetition and progress printed as it goes.

use crate::{
    procfs,
    stats::Spread,
    workload::{self, ALL, Settings, Workload},
};
use amesh_testbed::mesh::{Mesh, pod};
use anyhow::{Context, Result, bail};
use std::{
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// The two phases, in the order they run.
pub const PHASES: [&str; 2] = ["no mesh", "amesh"];

/// One workload in one phase: per figure its repetitions, and what the ztunnels spent.
#[derive(Debug, Default)]
pub struct PhaseResult {
    /// Per metric, one value per repetition.
    pub values: Vec<Vec<f64>>,
    /// ztunnel CPU seconds (both nodes) per repetition.
    pub cpu_s: Vec<f64>,
    /// Wall-clock seconds per repetition (warm-up included, like the CPU time).
    pub wall_s: Vec<f64>,
    /// Peak RSS in KiB per node, the highest over the repetitions.
    pub peak_rss_kib: Vec<(&'static str, u64)>,
    pub error: Option<String>,
}

impl PhaseResult {
    pub fn spread(&self, metric: usize) -> Option<Spread> {
        Spread::of(self.values.get(metric)?)
    }
}

/// Every workload in both phases.
#[derive(Debug)]
pub struct Results {
    pub settings: Settings,
    /// Per workload of [`ALL`]: per phase of [`PHASES`].
    pub runs: Vec<(Workload, [PhaseResult; 2])>,
    pub elapsed: Duration,
}

impl Results {
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (w, phases) in &self.runs {
            for (phase, r) in PHASES.iter().zip(phases) {
                if let Some(e) = &r.error {
                    f.push(format!("{phase}: {}: {e}", w.title(&self.settings)));
                }
            }
        }
        f
    }
}

/// The ztunnels of a running mesh: (node, pid).
struct Ztunnels(Vec<(&'static str, u32)>);

impl Ztunnels {
    fn of(mesh: &Mesh) -> Self {
        Self(
            mesh.nodes
                .iter()
                .map(|n| (n.name, n.ztunnel.child.id()))
                .collect(),
        )
    }

    /// Resets the peak RSS counters and reads the CPU ticks so far.
    fn before(&self) -> Result<Vec<u64>> {
        self.0
            .iter()
            .map(|&(_, pid)| {
                procfs::reset_peak_rss(pid)?;
                procfs::cpu_ticks(pid)
            })
            .collect()
    }

    /// CPU seconds since `before` (summed) and peak RSS per node.
    fn after(&self, before: &[u64], tck: u64) -> Result<(f64, Vec<(&'static str, u64)>)> {
        let mut ticks = 0;
        let mut rss = Vec::new();
        for (&(node, pid), b) in self.0.iter().zip(before) {
            ticks += procfs::cpu_ticks(pid)?.saturating_sub(*b);
            rss.push((node, procfs::peak_rss_kib(pid)?));
        }
        Ok((ticks as f64 / tck as f64, rss))
    }
}

/// Prints `[i/n] phase: what ...` and the figures as they come.
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    fn start(&mut self, phase: &str, title: &str) {
        self.done += 1;
        let t = self.started.elapsed().as_secs();
        print!(
            "[{:>2}/{}] {t:>3}s {phase}: {title} ...",
            self.done, self.total
        );
        let _ = std::io::stdout().flush();
    }

    fn note(&self, text: &str) {
        print!(" {text}");
        let _ = std::io::stdout().flush();
    }
}

/// Builds the pods, runs everything, tears it all down.
pub fn run(settings: Settings) -> Result<Results> {
    let started = Instant::now();
    let mut mesh = Mesh::try_build(&[
        pod("client", "bench", "node1"),
        pod("server", "bench", "node2"),
    ])
    .context("building the pods")?;
    println!(
        "pods under prefix {}: client {} (node1), server {} (node2)",
        mesh.bed.prefix(),
        mesh.pod("client").ipv4(),
        mesh.pod("server").ipv4()
    );
    let servers = workload::start_servers(mesh.pod("server"))?;
    let mut progress = Progress {
        done: 0,
        total: ALL.len() * PHASES.len(),
        started,
    };
    let mut runs: Vec<(Workload, [PhaseResult; 2])> =
        ALL.iter().map(|w| (*w, Default::default())).collect();
    for (p, phase) in PHASES.iter().enumerate() {
        if p == 1 {
            start_mesh(&mut mesh)?;
        }
        for (w, results) in runs.iter_mut() {
            progress.start(phase, &w.title(&settings));
            results[p] = measure(&settings, &mesh, *w, &progress);
            report_line(&results[p], *w);
        }
    }
    drop(servers);
    let left = mesh.close();
    if !left.is_empty() {
        bail!("could not remove everything the bench made: {left:?}");
    }
    Ok(Results {
        settings,
        runs,
        elapsed: started.elapsed(),
    })
}

fn start_mesh(mesh: &mut Mesh) -> Result<()> {
    println!("starting amesh: capture programs, enrollment, a ztunnel per node");
    mesh.try_start(&[]).context("starting the mesh")?;
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)?;
    }
    Ok(())
}

/// Every repetition of `w` in the current phase; the first failure ends it.
fn measure(s: &Settings, mesh: &Mesh, w: Workload, progress: &Progress) -> PhaseResult {
    let mut r = PhaseResult {
        values: vec![Vec::new(); w.metrics().len()],
        ..Default::default()
    };
    if let Err(e) = repetitions(s, mesh, w, progress, &mut r) {
        r.error = Some(format!("{e:#}"));
    }
    r
}

fn repetitions(
    s: &Settings,
    mesh: &Mesh,
    w: Workload,
    progress: &Progress,
    r: &mut PhaseResult,
) -> Result<()> {
    let zt = Ztunnels::of(mesh);
    let tck = procfs::clock_ticks_per_second();
    let server = SocketAddr::new(mesh.pod("server").ipv4().into(), 0);
    let meshed_before = mtls_connections(mesh)?;
    for _ in 0..s.reps {
        let before = zt.before()?;
        let t0 = Instant::now();
        let figures = w.run_once(s, mesh.pod("client"), server)?;
        r.wall_s.push(t0.elapsed().as_secs_f64());
        let (cpu, rss) = zt.after(&before, tck)?;
        if !zt.0.is_empty() {
            r.cpu_s.push(cpu);
        }
        for (node, kib) in rss {
            match r.peak_rss_kib.iter_mut().find(|(n, _)| *n == node) {
                Some((_, max)) => *max = (*max).max(kib),
                None => r.peak_rss_kib.push((node, kib)),
            }
        }
        progress.note(&short(w, &figures));
        for (v, f) in r.values.iter_mut().zip(figures) {
            v.push(f);
        }
    }
    if let (Some(before), Some(after)) = (meshed_before, mtls_connections(mesh)?)
        && after <= before
    {
        bail!(
            "the traffic did not go through the mesh (no new mutual-TLS connection at node2's ztunnel)"
        );
    }
    Ok(())
}

/// Connections node2's ztunnel accepted over HBONE so far; `None` without a mesh.
fn mtls_connections(mesh: &Mesh) -> Result<Option<u64>> {
    let Some(node) = mesh.nodes.iter().find(|n| n.name == "node2") else {
        return Ok(None);
    };
    let (_, text) = node.ztunnel.try_http("Metrics", "GET", "/metrics")?;
    Ok(Some(count_mtls_opened(&text)))
}

/// Sums `istio_tcp_connections_opened_total` over the destination's mutual-TLS series.
pub fn count_mtls_opened(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|l| l.contains("reporter=\"destination\"") && l.contains("mutual_tls"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One repetition's figures, short, for the progress line.
fn short(w: Workload, f: &[f64]) -> String {
    match w {
        Workload::Latency(_) => format!("{:.0}/{:.0}/{:.0}", f[0], f[1], f[2]),
        _ => crate::report::num(f[0]),
    }
}

fn report_line(r: &PhaseResult, w: Workload) {
    if let Some(e) = &r.error {
        println!(" FAILED: {e}");
        return;
    }
    let figures: Vec<String> = w
        .metrics()
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let s = r.spread(i)?;
            Some(format!(
                "{} {} {}",
                m.key,
                crate::report::num(s.median),
                m.unit
            ))
        })
        .collect();
    println!(" -> {}", figures.join(", "));
}

#[cfg(test)]
mod tests {
    use super::count_mtls_opened;

    #[test]
    fn counts_destination_mtls_connections() {
        let m = "# HELP istio_tcp_connections_opened ...\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\",x=\"a\"} 5\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\",x=\"b\"} 7\n\
            istio_tcp_connections_opened_total{reporter=\"source\",connection_security_policy=\"mutual_tls\"} 100\n\
            istio_tcp_connections_closed_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\"} 9\n";
        assert_eq!(count_mtls_opened(m), 12);
        assert_eq!(count_mtls_opened(""), 0);
    }
}
