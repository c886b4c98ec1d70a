//! The results as a Markdown table (printed, and pasted into the README as is) and as JSON.

use crate::{
    bench::{PHASES, PhaseResult, Results},
    procfs,
    stats::{Spread, median, ratio},
};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// A figure with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(s: Option<&Spread>) -> String {
    match s {
        Some(s) if s.reps.len() > 1 => {
            format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
        }
        Some(s) => num(s.median),
        None => "failed".into(),
    }
}

/// The ztunnel columns of a workload's first row: median CPU seconds per run (and as a share
/// of one core over the run), and peak RSS per node.
fn ztunnel_cells(r: &PhaseResult) -> (String, String) {
    let cpu = match (median(&r.cpu_s), median(&r.wall_s)) {
        (Some(c), Some(w)) if w > 0.0 => format!("{} ({:.0}%)", num(c), 100.0 * c / w),
        _ => "–".into(),
    };
    let rss: Vec<String> = r
        .peak_rss_kib
        .iter()
        .map(|(_, kib)| format!("{:.0}", *kib as f64 / 1024.0))
        .collect();
    let rss = if rss.is_empty() {
        "–".into()
    } else {
        rss.join(" / ")
    };
    (cpu, rss)
}

/// The Markdown table: one row per figure.
pub fn table(results: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| measurement | no mesh | amesh | amesh / no mesh | ztunnel CPU s per run (% of a core) | ztunnel peak RSS MiB (node1 / node2) |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (w, [plain, meshed]) in &results.runs {
        let (cpu, rss) = ztunnel_cells(meshed);
        for (i, m) in w.metrics().iter().enumerate() {
            let (a, b) = (plain.spread(i), meshed.spread(i));
            let r = match (&a, &b) {
                (Some(a), Some(b)) => {
                    ratio(b.median, a.median).map_or("–".into(), |r| format!("{r:.2}×"))
                }
                _ => "–".into(),
            };
            let (cpu, rss) = if i == 0 {
                (cpu.as_str(), rss.as_str())
            } else {
                ("", "")
            };
            let _ = writeln!(
                t,
                "| {} ({}) | {} | {} | {r} | {cpu} | {rss} |",
                m.name,
                m.unit,
                cell(a.as_ref()),
                cell(b.as_ref())
            );
        }
    }
    t
}

fn spread_json(s: Option<Spread>) -> Value {
    match s {
        Some(s) => {
            json!({"median": s.median, "min": s.min, "max": s.max, "cv": s.cv, "reps": s.reps})
        }
        None => Value::Null,
    }
}

fn phase_json(r: &PhaseResult) -> Value {
    let rss: serde_json::Map<String, Value> = r
        .peak_rss_kib
        .iter()
        .map(|(n, kib)| ((*n).to_string(), json!(*kib as f64 / 1024.0)))
        .collect();
    json!({
        "error": r.error,
        "wall_seconds": r.wall_s,
        "ztunnel_cpu_seconds": spread_json(Spread::of(&r.cpu_s)),
        "ztunnel_peak_rss_mib": rss,
    })
}

/// Everything: figures, ratios, spread, ztunnel cost, machine, revision, time, settings.
pub fn json(results: &Results, now: std::time::SystemTime, root: &std::path::Path) -> Value {
    let workloads: Vec<Value> = results
        .runs
        .iter()
        .map(|(w, phases)| {
            let metrics: Vec<Value> = w
                .metrics()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let [a, b] = [phases[0].spread(i), phases[1].spread(i)];
                    let r = a
                        .as_ref()
                        .zip(b.as_ref())
                        .and_then(|(a, b)| ratio(b.median, a.median));
                    json!({
                        "key": m.key, "name": m.name, "unit": m.unit,
                        "higher_is_better": m.higher_is_better,
                        "no_mesh": spread_json(a), "amesh": spread_json(b), "ratio": r,
                    })
                })
                .collect();
            let per_phase: serde_json::Map<String, Value> = PHASES
                .iter()
                .zip(phases)
                .map(|(p, r)| (p.replace(' ', "_"), phase_json(r)))
                .collect();
            json!({
                "workload": w.key(), "title": w.title(&results.settings),
                "metrics": metrics, "phases": per_phase,
            })
        })
        .collect();
    json!({
        "timestamp": rfc3339(now),
        "git_revision": procfs::git_revision(root),
        "machine": procfs::machine(),
        "settings": results.settings.to_json(),
        "elapsed_seconds": results.elapsed.as_secs_f64(),
        "workloads": workloads,
        "failures": results.failures(),
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(25.3456), "25.3");
        assert_eq!(num(2.3456), "2.35");
        assert_eq!(num(0.12345), "0.123");
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(0.0), "0");
    }

    #[test]
    fn timestamps_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn cells_show_spread_only_with_repetitions() {
        assert_eq!(
            cell(Spread::of(&[1.0, 3.0, 2.0]).as_ref()),
            "2.00 (1.00–3.00)"
        );
        assert_eq!(cell(Spread::of(&[150.0]).as_ref()), "150");
        assert_eq!(cell(None), "failed");
    }
}
