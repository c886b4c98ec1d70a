//! The tour's waypoint steps: a Gateway of class istio-waypoint in `shop`, the namespace
//! bound to it, an HTTPRoute on `web.shop` that sends requests with a header to one endpoint
//! and splits the rest by weight, shown with real curl requests and the waypoint's
//! `istio_requests_total{reporter="waypoint"}`.

use amesh_testbed::{
    mesh::{Mesh, VIP},
    waypoint::{self, WaypointProcess},
};
use anyhow::{Context, Result, anyhow, ensure};
use std::{collections::BTreeMap, time::Duration};

/// The waypoint's Service address.
const WAYPOINT_VIP: &str = "10.96.0.30";

/// One Service per endpoint, and the route on `web`.
const ROUTE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: cart-v1, namespace: shop}
spec: {clusterIP: 10.96.0.31, selector: {app: cart-0}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart-v2, namespace: shop}
spec: {clusterIP: 10.96.0.32, selector: {app: cart-1}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: cart-v2, port: 80}]
  - backendRefs: [{name: cart-v1, port: 80, weight: 3}, {name: cart-v2, port: 80, weight: 1}]
"#;

/// `curl` from `web` to the service; the app that answered.
fn curl(mesh: &Mesh, header: Option<&str>) -> Result<String> {
    let mut cmd = mesh.pod("web").command("curl");
    cmd.args(["-sS", "--max-time", "5"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("http://{VIP}/cart")).output()?;
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        body.contains("x-request-id="),
        "not through the waypoint: {body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    body.split_whitespace()
        .find_map(|f| f.strip_prefix("served-by="))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no answer: {body}"))
}

/// Applies the Gateway, starts its pod's proxy, binds `shop`; returns the running waypoint.
pub fn bind(mesh: &Mesh) -> Result<(String, WaypointProcess)> {
    mesh.write_source(
        "waypoint.yaml",
        // Istio's default: services bind, pod-addressed traffic stays direct.
        &waypoint::gateway_yaml("shop", "waypoint", WAYPOINT_VIP, "service"),
    )?;
    let w = WaypointProcess::try_start(mesh, "waypoint", "shop", "waypoint")
        .context("starting amesh-waypoint in the waypoint pod")?;
    mesh.set_namespace_label("shop", "istio.io/use-waypoint", Some("waypoint"))?;
    waypoint::try_wait_bound(
        mesh,
        "node1",
        "web.shop.svc.cluster.local",
        "shop/waypoint.shop.svc.cluster.local",
    )?;
    // ztunnel and the waypoint each get the binding in their own push: the first request
    // may reach the waypoint before it knows the Service is bound to it (refused 400).
    let via = amesh_testbed::eventually(
        "a request answered through the waypoint",
        Duration::from_secs(10),
        || curl(mesh, None).map_err(|e| e.to_string()),
    )?;
    Ok((
        format!(
            "Gateway shop/waypoint (istio-waypoint) ready; shop labelled istio.io/use-waypoint=waypoint; web.shop's Service.waypoint set; a request answered by {via} through it"
        ),
        w,
    ))
}

/// Applies the HTTPRoute and shows its effect.
pub fn route(mesh: &Mesh) -> Result<String> {
    mesh.write_source("route.yaml", ROUTE)?;
    // The route has arrived once a header request always lands on cart-1 and a plain one
    // may land on cart-0 (before it, the VIP spreads over both).
    amesh_testbed::eventually("the route applied", Duration::from_secs(15), || {
        let canary: Vec<String> = (0..6)
            .map(|_| curl(mesh, Some("x-canary: true")))
            .collect::<Result<_>>()
            .map_err(|e| e.to_string())?;
        canary
            .iter()
            .all(|a| a == "cart-1-app")
            .then_some(())
            .ok_or_else(|| format!("canary answered by {canary:?}"))
    })?;
    let mut split: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..40 {
        *split.entry(curl(mesh, None)?).or_default() += 1;
    }
    let mut canary: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..10 {
        *canary
            .entry(curl(mesh, Some("x-canary: true"))?)
            .or_default() += 1;
    }
    ensure!(
        canary.keys().all(|k| k == "cart-1-app"),
        "x-canary requests answered by {canary:?}"
    );
    let (v1, v2) = (
        split.get("cart-0-app").copied().unwrap_or(0),
        split.get("cart-1-app").copied().unwrap_or(0),
    );
    ensure!(
        v1 > v2 && v2 > 0,
        "weights 3:1 over 40 requests gave cart-0 {v1}, cart-1 {v2}"
    );
    Ok(format!(
        "x-canary: true -> cart-1 10/10; the rest 3:1 -> cart-0 {v1}, cart-1 {v2} of 40"
    ))
}

/// The waypoint's request metrics.
pub fn metrics(w: &WaypointProcess) -> Result<String> {
    let text = w.try_metrics()?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{reporter=\"waypoint\""))
        .collect();
    ensure!(
        !lines.is_empty(),
        "no istio_requests_total from the waypoint"
    );
    for l in &lines {
        let (series, value) = l.rsplit_once(' ').unwrap_or((l, ""));
        let labels = series
            .split_once('{')
            .map_or("", |(_, rest)| rest.trim_end_matches('}'));
        let keep = ["source_principal", "destination_service=", "response_code"];
        let short: Vec<&str> = labels
            .split(',')
            .filter(|kv| keep.iter().any(|k| kv.starts_with(k)))
            .collect();
        println!(
            "    istio_requests_total{{reporter=\"waypoint\",{}}} {value}",
            short.join(",")
        );
    }
    let total = waypoint::requests(&text, &["reporter=\"waypoint\"", "response_code=\"200\""]);
    ensure!(total >= 50.0, "only {total} requests counted");
    Ok(format!(
        "{total} requests counted with reporter=\"waypoint\", by backend service"
    ))
}
