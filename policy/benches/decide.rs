//! How long one decision takes with 1,000 policies applying to a workload. Reported, never
//! asserted: `cargo bench -p amesh-policy`.

use amesh_identity::Identity;
use amesh_policy::{
    Action, Authorization, Clause, Connection, IpNet, Match, Rule, Scope, StringMatch, evaluate,
};
use std::{hint::black_box, time::Instant};

fn policies(n: usize) -> Vec<Authorization> {
    (0..n)
        .map(|i| Authorization {
            name: format!("p{i}"),
            namespace: "shop".into(),
            scope: Scope::Namespace,
            // Mostly ALLOW rules that do not match, a few DENYs that do not either: the worst
            // case walks every policy.
            action: if i % 10 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            rules: vec![Rule {
                clauses: vec![
                    Clause {
                        matches: vec![Match {
                            principals: vec![StringMatch::Exact(format!(
                                "cluster.local/ns/other/sa/sa{i}"
                            ))],
                            source_ips: vec![IpNet::parse("192.168.0.0/16").unwrap_or(IpNet {
                                addr: [0u8; 4].into(),
                                prefix: 0,
                            })],
                            ..Match::default()
                        }],
                    },
                    Clause {
                        matches: vec![Match {
                            destination_ports: vec![8080, 9090],
                            ..Match::default()
                        }],
                    },
                ],
            }],
            dry_run: false,
        })
        .collect()
}

fn main() {
    let all = policies(1000);
    let refs: Vec<&Authorization> = all.iter().collect();
    let id = Identity::new("cluster.local", "shop", "client");
    let conn = Connection {
        source: Some(&id),
        source_ip: "10.1.2.3".parse().unwrap_or([0u8; 4].into()),
        destination_ip: "10.9.9.9".parse().unwrap_or([0u8; 4].into()),
        destination_port: 8080,
    };
    for _ in 0..100 {
        black_box(evaluate(&refs, &conn));
    }
    let rounds = 5;
    let per_round = 2_000;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            black_box(evaluate(black_box(&refs), black_box(&conn)));
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_round as f64);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "policy decision with {} policies: median {:.1} µs per connection (min {:.1}, max {:.1})",
        refs.len(),
        samples[rounds / 2] / 1000.0,
        samples[0] / 1000.0,
        samples[rounds - 1] / 1000.0
    );
}
