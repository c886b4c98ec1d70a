//! `cargo xtask demo`: a mesh on this machine, built the way a cluster builds it. The control
//! plane (xDS and Istio's CA) and two nodes, each with the node agent (`amesh-node`: eBPF
//! capture, chained into the node's CNI configuration, ZDS) and a real ztunnel; pods made by
//! a container runtime's CNI calls through Debian's bridge + host-local plugins and
//! `amesh-cni`; the control plane and the agents read one directory of Kubernetes YAML. Every
//! step is verified, not just printed.
//!
//! `--hold` keeps the mesh up until Ctrl-C and describes it in `target/amesh-demo/mesh.json`.
//! Exits 0 only if every step passed; removes everything it made, also on Ctrl-C.
#![forbid(unsafe_code)]

mod hold;
mod tour;
mod waypoint;

use amesh_testbed::mesh::{Mesh, PodSpec, pod};
use anyhow::{Result, anyhow, ensure};

struct Step {
    name: &'static str,
    outcome: Result<String>,
}

const USAGE: &str = "usage: amesh-demo [--hold]

  --hold   keep the mesh running after the tour until Ctrl-C, and write
           target/amesh-demo/mesh.json describing it (pods, nodes, addresses)";

/// Two namespaces in the mesh (once labelled), a service with an endpoint on each node, and
/// a pod in a namespace that stays outside.
fn specs() -> Vec<PodSpec> {
    let endpoint = |p: PodSpec| PodSpec {
        in_service: true,
        ..p
    };
    vec![
        pod("web", "web", "node1"),
        endpoint(pod("cart-0", "shop", "node1")),
        endpoint(pod("cart-1", "shop", "node2")),
        PodSpec {
            service_account: "default",
            ..pod("legacy", "outside", "node2")
        },
        // The waypoint's pod: never captured itself, an instance of Gateway `waypoint` once
        // that exists.
        PodSpec {
            tcp: true,
            labels: &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
            ..pod("waypoint", "shop", "node2")
        },
    ]
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hold = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => false,
        ["--hold"] => true,
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    println!(
        "amesh demo: two nodes in network namespaces, pods through the real CNI chain, real eBPF capture, real ztunnels\n"
    );
    let steps = match run(hold) {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("demo: could not set up: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    summary(&steps)
}

fn summary(steps: &[Step]) -> std::process::ExitCode {
    println!("\n{:<62} {:<6} evidence", "step", "result");
    println!("{}", "-".repeat(130));
    let mut failed = 0;
    for s in steps {
        let (result, evidence) = match &s.outcome {
            Ok(e) => ("ok", e.clone()),
            Err(e) => {
                failed += 1;
                ("FAIL", format!("{e:#}"))
            }
        };
        println!("{:<62} {:<6} {evidence}", s.name, result);
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

fn run(hold: bool) -> Result<Vec<Step>> {
    ensure!(
        amesh_sys::fs::euid() == 0,
        "the demo builds network namespaces and loads eBPF: run it as root"
    );
    if hold {
        hold::check_free()?;
    }
    let mut mesh = Mesh::try_build_for_cni(&specs(), &[])?;
    println!(
        "• prefix {} (every namespace, veth, cgroup and pin this run makes carries it)",
        mesh.bed.prefix()
    );
    let xds = mesh.try_start_control_plane()?.to_string();
    println!(
        "• control plane: xDS and Istio's CA on {xds}, reading {}",
        mesh.source_dir().display()
    );
    mesh.try_start_agents()?;
    println!(
        "• node1, node2: amesh-node loaded the capture programs and chained amesh-cni into the node's CNI configuration; ztunnel connected over ZDS"
    );
    let mut steps = Vec::new();
    let step = |steps: &mut Vec<Step>, name, outcome: Result<String>| {
        println!("[{}] {name}", if outcome.is_ok() { "ok  " } else { "FAIL" });
        steps.push(Step { name, outcome });
    };
    let created = tour::create_pods(&mut mesh);
    let all_created = created.is_ok();
    step(
        &mut steps,
        "pods created by the CNI chain (bridge, host-local, amesh-cni)",
        created,
    );
    if !all_created {
        return Ok(steps);
    }
    for (s, p) in mesh.specs.iter().zip(&mesh.pods) {
        println!(
            "  {:<7} ns {:<8} {:<6} {:<14} {}",
            s.name,
            s.namespace,
            s.node.unwrap_or_default(),
            p.ipv4(),
            p.ipv6()
        );
    }
    let _apps = mesh.try_apps(&["cart-0", "cart-1", "legacy"])?;
    for node in ["node1", "node2"] {
        mesh.try_wait_ready(node)?;
    }
    step(
        &mut steps,
        "before the mesh: the request crosses the wire in plaintext",
        tour::plaintext_before(&mesh),
    );
    step(
        &mut steps,
        "label web and shop ambient: the agents enrol the running pods",
        tour::enrol_by_label(&mesh),
    );
    step(
        &mut steps,
        "ztunnels fed over xDS, pod certs from the control plane CA",
        tour::control_plane(&mesh),
    );
    step(
        &mut steps,
        "in the mesh: HBONE mTLS on 15008, no plaintext on the wire",
        tour::hbone_on_the_wire(&mesh),
    );
    step(
        &mut steps,
        "the destination sees the client's SPIFFE identity",
        tour::identities(&mesh),
    );
    step(
        &mut steps,
        "the service VIP spreads over its endpoints",
        tour::service_spread(&mesh),
    );
    step(
        &mut steps,
        "DNS: web.shop resolves through ztunnel's in-pod proxy",
        tour::dns(&mesh),
    );
    step(
        &mut steps,
        "a DENY policy refuses the client, with its reason",
        tour::deny(&mesh),
    );
    step(
        &mut steps,
        "removing the policy restores access",
        tour::undeny(&mesh),
    );
    step(
        &mut steps,
        "pods outside the mesh still reach in (PERMISSIVE)",
        tour::outsider(&mesh),
    );
    step(
        &mut steps,
        "Istio metrics on the destination node",
        tour::metrics(&mesh),
    );
    let waypoint = match waypoint::bind(&mesh) {
        Ok((evidence, w)) => {
            step(
                &mut steps,
                "a waypoint for shop: Gateway, namespace bound",
                Ok(evidence),
            );
            Some(w)
        }
        Err(e) => {
            step(
                &mut steps,
                "a waypoint for shop: Gateway, namespace bound",
                Err(e),
            );
            None
        }
    };
    if let Some(w) = &waypoint {
        step(
            &mut steps,
            "an HTTPRoute: a header to cart-1, the rest split 3:1",
            waypoint::route(&mesh),
        );
        step(
            &mut steps,
            "Istio request metrics at the waypoint",
            waypoint::metrics(w),
        );
    }
    if hold {
        summary(&steps);
        hold::hold(&mesh, &waypoint.iter().collect::<Vec<_>>())?;
    }
    drop(waypoint);
    let left = mesh.close();
    let cleaned = if left.is_empty() {
        Ok("netns, veths, cgroup, pins, processes, CNI state all removed".into())
    } else {
        Err(anyhow!("left: {left:?}"))
    };
    step(&mut steps, "nothing left behind", cleaned);
    Ok(steps)
}
