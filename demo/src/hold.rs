//! `--hold`: the mesh stays up until Ctrl-C, described in `target/amesh-demo/mesh.json` for
//! scripts and with a few commands to try printed for people.

use amesh_testbed::{
    mesh::{APP_PORT, Mesh, VIP},
    waypoint::WaypointProcess,
};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Where scripts find the description (relative to the checkout, where xtask runs the demo).
const MESH_JSON: &str = "target/amesh-demo/mesh.json";

/// Refuses to start a second held mesh from the same checkout while the first runs (they
/// would share `mesh.json`, and the first one's Ctrl-C would remove the second's).
pub fn check_free() -> Result<()> {
    let Ok(bytes) = std::fs::read(MESH_JSON) else {
        return Ok(());
    };
    let running = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["demo_pid"].as_u64())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    match running {
        Some(pid) => anyhow::bail!(
            "another `demo --hold` (pid {pid}) is running from this checkout ({MESH_JSON}); stop it first"
        ),
        None => Ok(()),
    }
}

/// What `mesh.json` says about the mesh (and its waypoints).
pub fn describe(mesh: &Mesh, waypoints: &[&WaypointProcess]) -> Result<Value> {
    let cp = mesh.control_plane.as_ref().context("no control plane")?;
    let mut nodes = Vec::new();
    for node in &mesh.agent_nodes {
        let z = &node.ztunnel;
        nodes.push(json!({
            "name": node.name,
            "ztunnel": {
                "pid": z.child.id(),
                "netns": null,
                "admin": z.try_endpoint("Admin")?.to_string(),
                "metrics": z.try_endpoint("Metrics")?.to_string(),
                "readiness": z.try_endpoint("Readiness")?.to_string(),
            },
            "agent": {
                "pid": node.agent.as_ref().map(|a| a.child.id()),
                "cni_conf_dir": node.dirs.conf_dir,
                "cni_socket": node.dirs.cni_socket,
                "zds_socket": node.dirs.zds_socket,
                "pins": node.dirs.pins,
            },
        }));
    }
    let cgroup = mesh.bed.cgroup_path().join("cgroup.procs");
    let mut pods = Vec::new();
    for (s, p) in mesh.specs.iter().zip(&mesh.pods) {
        let node = s.node.unwrap_or_default();
        let key = format!("{}/{}", s.namespace, s.name);
        let enrolled = mesh.agent_state(node)["pods"][&key]["redirection_enabled"] == true;
        pods.push(json!({
            "name": s.name,
            "namespace": s.namespace,
            "node": node,
            "netns": p.netns_name(),
            "ip": p.ipv4().to_string(),
            "ipv6": p.ipv6().to_string(),
            "service_account": s.service_account,
            "enrolled": enrolled,
            // Processes must also join the pods' cgroup, where outbound capture attaches
            // (on a real node every process is below the cgroup root); before entering the
            // namespace, since `ip netns exec` remounts /sys.
            "exec": format!(
                "sh -c 'echo $$ > {} && exec ip netns exec {} \"$@\"' --",
                cgroup.display(),
                p.netns_name(),
            ),
        }));
    }
    Ok(json!({
        "prefix": mesh.bed.prefix(),
        "demo_pid": std::process::id(),
        "underlay": { "netns": mesh.bed.underlay(), "bridge": "br0", "cgroup": mesh.bed.cgroup_path() },
        "controlplane": {
            "pid": cp.child.id(),
            "xds": mesh.xds.map(|a| a.to_string()),
            "config_dir": mesh.source_dir(),
        },
        "nodes": nodes,
        "pods": pods,
        "waypoints": waypoints
            .iter()
            .map(|w| {
                let pod = mesh.pod(&w.pod);
                Ok(json!({
                    "gateway": w.name,
                    "namespace": w.namespace,
                    "pid": w.daemon.child.id(),
                    "netns": pod.netns_name(),
                    "ip": pod.ipv4().to_string(),
                    "hbone": format!("{}:15008", pod.ipv4()),
                    "admin": w.try_endpoint("admin")?.to_string(),
                    "metrics": w.try_endpoint("metrics")?.to_string(),
                    "readiness": w.try_endpoint("readiness")?.to_string(),
                }))
            })
            .collect::<Result<Vec<Value>>>()?,
    }))
}

/// Writes `mesh.json`, prints how to reach the mesh, and waits for Ctrl-C (the test bed's
/// handler then stops every process and removes every object, `mesh.json` included).
pub fn hold(mesh: &Mesh, waypoints: &[&WaypointProcess]) -> Result<()> {
    let path = PathBuf::from(MESH_JSON);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let description = describe(mesh, waypoints)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&description)?)
        .with_context(|| format!("writing {}", path.display()))?;
    amesh_testbed::remove_on_terminate(&std::fs::canonicalize(&path)?);
    let web = &description["pods"][0];
    let cart1 = mesh.v4("cart-1", APP_PORT);
    println!("\nthe mesh stays up until Ctrl-C; described in {MESH_JSON}. Try:");
    println!(
        "  {} curl -s http://{cart1}/        # web -> cart-1 through the mesh",
        web["exec"].as_str().unwrap_or_default()
    );
    println!(
        "  curl -s http://{}/config_dump     # node1's ztunnel",
        description["nodes"][0]["ztunnel"]["admin"]
            .as_str()
            .unwrap_or_default()
    );
    println!(
        "  curl -s http://{}/metrics",
        description["nodes"][1]["ztunnel"]["metrics"]
            .as_str()
            .unwrap_or_default()
    );
    if let Some(w) = description["waypoints"].get(0) {
        println!(
            "  {} curl -s -H 'x-canary: true' http://{VIP}/   # through the waypoint, to cart-1",
            web["exec"].as_str().unwrap_or_default()
        );
        println!(
            "  curl -s http://{}/metrics | grep istio_requests_total   # the waypoint's requests",
            w["metrics"].as_str().unwrap_or_default()
        );
    }
    println!(
        "  drop an AuthorizationPolicy YAML into {} (it takes effect live)",
        mesh.source_dir().display()
    );
    loop {
        std::thread::park();
    }
}
