//! The control plane at cluster scale: 10,000 pods and 2,000 services (100 namespaces) read,
//! translated, cataloged, and one pod changed and diffed for a subscriber. Reported, never
//! asserted: `cargo bench -p amesh-controlplane`.

use amesh_controlplane::{
    catalog::Catalog,
    fixtures::{self, PODS, SERVICES, scale_objects as objects},
    translate::{Mesh, translate},
};
use amesh_kube::source::Snapshot;
use amesh_proto::ADDRESS_TYPE_URL;
use std::{collections::HashMap, time::Instant};

fn read(text: &str) -> Snapshot {
    fixtures::read(text).unwrap_or_else(|errors| panic!("{errors:?}"))
}

fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".into(), |kb| format!("{:.0} MiB", kb / 1024.0))
}

fn main() {
    let mesh = Mesh::default();
    let text = objects(None);
    let t = Instant::now();
    let snapshot = read(&text);
    let read_time = t.elapsed();
    let t = Instant::now();
    let resources = translate(&snapshot, &mesh);
    let translate_time = t.elapsed();
    let t = Instant::now();
    let catalog = Catalog::from_resources(&resources);
    let catalog_time = t.elapsed();
    let bytes: usize = catalog
        .types
        .values()
        .flat_map(|t| t.values())
        .map(|e| e.bytes.len())
        .sum();
    let held: HashMap<String, String> = catalog.types[ADDRESS_TYPE_URL]
        .iter()
        .map(|(n, e)| (n.clone(), e.version.clone()))
        .collect();

    // One pod changes: re-translate everything (as the source watch does), diff for a
    // subscriber that holds the previous state.
    let changed = read(&objects(Some(4242)));
    let t = Instant::now();
    let next = Catalog::from_resources(&translate(&changed, &mesh));
    let delta = next.diff(ADDRESS_TYPE_URL, &held);
    let push_time = t.elapsed();

    println!(
        "{PODS} pods, {SERVICES} services: {} addresses, {:.1} MiB encoded",
        resources.addresses.len(),
        bytes as f64 / 1048576.0
    );
    println!("  parse YAML          {read_time:>10.1?}");
    println!("  translate           {translate_time:>10.1?}");
    println!("  encode + version    {catalog_time:>10.1?}");
    println!(
        "  one pod changed: translate + encode + diff {push_time:.1?} -> {} resource(s) to push",
        delta.updated.len() + delta.removed.len()
    );
    println!("  peak RSS            {}", peak_rss_mib());
}
