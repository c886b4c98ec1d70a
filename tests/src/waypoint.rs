//! amesh's waypoint in the test bed: the YAML that makes a pod a waypoint and binds a
//! namespace to it, and the `amesh-waypoint` process serving that pod's network from outside
//! it (`--netns`), as ztunnel serves its pods.

use crate::{
    BedError,
    daemon::Daemon,
    mesh::{Mesh, failed, http_raw},
    probe::sibling_binary,
};
use std::{net::SocketAddr, process::Command, time::Duration};

/// The YAML of waypoint `name` in namespace `ns`: a Gateway of class istio-waypoint for
/// `waypoint_for` traffic (`service`, `workload`, `all`), and its Service on 15008 (at `vip`)
/// selecting the waypoint's pods.
pub fn gateway_yaml(ns: &str, name: &str, vip: &str, waypoint_for: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/waypoint-for: {waypoint_for}}}}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{clusterIP: {vip}, selector: {{gateway.networking.k8s.io/gateway-name: {name}}}, ports: [{{name: mesh, port: 15008}}]}}\n"
    )
}

/// The test bed's source YAML with pod `name` (a plain-TCP pod of namespace `ns`) made the
/// waypoint `name` for all traffic, and `ns` bound to it.
pub fn bind_namespace(source: &str, ns: &str, name: &str, vip: &str) -> String {
    source
        .replace(
            &format!("labels: {{app: {name}, istio.io/dataplane-mode: none}}"),
            &format!(
                "labels: {{app: {name}, istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: {name}}}"
            ),
        )
        .replace(
            &format!("metadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}"),
            &format!(
                "metadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: {name}}}}}"
            ),
        )
        + &gateway_yaml(ns, name, vip, "all")
}

/// Waits until `node`'s ztunnel sends Service `hostname` through `waypoint` (the
/// `namespace/hostname` of the waypoint's Service), as its config dump shows the binding.
pub fn try_wait_bound(
    mesh: &Mesh,
    node: &str,
    hostname: &str,
    waypoint: &str,
) -> Result<(), BedError> {
    let z = mesh.ztunnel(node);
    crate::eventually(
        format!("{node}'s ztunnel sending {hostname} through {waypoint}"),
        Duration::from_secs(15),
        || {
            let (_, dump) = z
                .try_http("Admin", "GET", "/config_dump")
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&dump).map_err(|e| e.to_string())?;
            v["services"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["hostname"] == hostname && s["waypoint"]["destination"] == waypoint)
                .then_some(())
                .ok_or_else(|| format!("not bound yet: {}", v["services"]))
        },
    )
}

/// A running `amesh-waypoint`.
#[derive(Debug)]
pub struct WaypointProcess {
    pub daemon: Daemon,
    /// The pod whose network it serves, its Gateway's name and namespace.
    pub pod: String,
    pub name: String,
    pub namespace: String,
}

impl WaypointProcess {
    /// Starts the waypoint `name` of namespace `ns` in pod `pod`'s network, fed by the mesh's
    /// control plane, and waits until it is ready.
    pub fn try_start(mesh: &Mesh, pod: &str, ns: &str, name: &str) -> Result<Self, BedError> {
        let xds = mesh
            .xds
            .ok_or_else(|| failed("starting the waypoint", "no control plane was started"))?
            .to_string();
        let mut cmd = Command::new(sibling_binary("amesh-waypoint"));
        cmd.args(["--name", name, "--namespace", ns, "--xds-address", &xds])
            .args(["--ca-root-file", &mesh.ca_root_path().display().to_string()])
            .args([
                "--token-file",
                &mesh.node_token_path().display().to_string(),
            ])
            .args(["--netns", &mesh.pod(pod).netns_path().display().to_string()])
            .args(["--readiness", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "info,amesh_waypoint=debug")
            .env("NO_COLOR", "1");
        let log = mesh.dir.join(format!("waypoint-{name}.log"));
        let mut daemon = Daemon::spawn(cmd, log, "amesh-waypoint")?;
        daemon.wait_log("the waypoint starting", Duration::from_secs(10), |l| {
            l.contains("amesh-waypoint starting").then_some(())
        })?;
        let w = Self {
            daemon,
            pod: pod.to_string(),
            name: name.to_string(),
            namespace: ns.to_string(),
        };
        let readiness = w.try_endpoint("readiness")?;
        crate::eventually(
            "the waypoint ready",
            Duration::from_secs(20),
            || match http_raw(readiness, b"GET /healthz/ready HTTP/1.1\r\nHost: w\r\n\r\n") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}\n{}", w.log())),
            },
        )?;
        Ok(w)
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// An endpoint's address (`readiness`, `metrics`, `admin`) from its `listening` line.
    pub fn try_endpoint(&self, name: &str) -> Result<SocketAddr, BedError> {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("listening") && l.contains(&format!("endpoint=\"{name}\"")))
            .find_map(|l| {
                l.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| failed(format!("finding the waypoint's {name} endpoint"), log))
    }

    /// Its Prometheus text.
    pub fn try_metrics(&self) -> Result<String, BedError> {
        let (_, body) = http_raw(
            self.try_endpoint("metrics")?,
            b"GET /metrics HTTP/1.1\r\nHost: w\r\n\r\n",
        )?;
        Ok(body)
    }
}

/// The sum of `istio_requests_total` samples whose labels hold every one of `needles`.
pub fn requests(metrics: &str, needles: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
