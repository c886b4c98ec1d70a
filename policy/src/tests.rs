//! Table-driven semantics tests: every field and its `not` form, scopes of action, DENY over
//! ALLOW, empty rules, dry-run, L7 attributes at L4, and PeerAuthentication precedence.

use crate::*;
use amesh_identity::Identity;
use std::collections::BTreeMap;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

fn s(v: &str) -> StringMatch {
    StringMatch::parse(v)
}

fn net(v: &str) -> IpNet {
    IpNet::parse(v).unwrap()
}

fn policy(name: &str, action: Action, matches: Vec<Match>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: Scope::Namespace,
        action,
        rules: vec![Rule {
            clauses: vec![Clause { matches }],
        }],
        dry_run: false,
    }
}

fn allow(m: Match) -> Authorization {
    policy("allow", Action::Allow, vec![m])
}

fn deny(m: Match) -> Authorization {
    policy("deny", Action::Deny, vec![m])
}

struct Conn {
    source: Option<Identity>,
    source_ip: &'static str,
    port: u16,
}

const CLIENT: fn() -> Conn = || Conn {
    source: Some(id("shop", "client")),
    source_ip: "10.1.2.3",
    port: 8080,
};
const PLAIN: fn() -> Conn = || Conn {
    source: None,
    source_ip: "10.1.2.3",
    port: 8080,
};

fn from(ns: &str, sa: &str) -> Conn {
    Conn {
        source: Some(id(ns, sa)),
        ..CLIENT()
    }
}

fn decide(policies: &[Authorization], c: &Conn) -> Outcome {
    let refs: Vec<&Authorization> = policies.iter().collect();
    let conn = Connection {
        source: c.source.as_ref(),
        source_ip: c.source_ip.parse().unwrap(),
        destination_ip: "10.9.9.9".parse().unwrap(),
        destination_port: c.port,
    };
    evaluate(&refs, &conn)
}

/// `Some("x")`: denied by policy x; `None`: allowed.
fn verdict(o: &Outcome) -> Option<String> {
    match &o.decision {
        Decision::Allow { .. } => None,
        Decision::Deny { by } => Some(by.trim_start_matches("shop/").to_string()),
    }
}

#[test]
fn authorization_table() {
    let ip_conn = |ip: &'static str| Conn {
        source_ip: ip,
        ..CLIENT()
    };
    let port = |p: u16| Conn {
        port: p,
        ..CLIENT()
    };
    let m = Match::default;
    let cases: Vec<(&str, Vec<Authorization>, Conn, Option<&str>)> = vec![
        ("no policy allows", vec![], CLIENT(), None),
        (
            "principal exact",
            vec![allow(Match {
                principals: vec![s("cluster.local/ns/shop/sa/client")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "principal exact, other peer",
            vec![allow(Match {
                principals: vec![s("cluster.local/ns/shop/sa/other")],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "principal prefix",
            vec![allow(Match {
                principals: vec![s("cluster.local/ns/shop/*")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "principal suffix",
            vec![allow(Match {
                principals: vec![s("*/sa/client")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "principal presence, mTLS",
            vec![allow(Match {
                principals: vec![s("*")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "principal presence, plaintext",
            vec![allow(Match {
                principals: vec![s("*")],
                ..m()
            })],
            PLAIN(),
            Some("no ALLOW"),
        ),
        (
            "notPrincipals names the peer",
            vec![allow(Match {
                not_principals: vec![s("cluster.local/ns/shop/sa/client")],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "notPrincipals names another",
            vec![allow(Match {
                not_principals: vec![s("cluster.local/ns/shop/sa/x")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "DENY notPrincipals * refuses plaintext",
            vec![deny(Match {
                not_principals: vec![s("*")],
                ..m()
            })],
            PLAIN(),
            Some("deny"),
        ),
        (
            "DENY notPrincipals * lets mTLS through",
            vec![deny(Match {
                not_principals: vec![s("*")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "namespace",
            vec![allow(Match {
                namespaces: vec![s("shop")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "namespace, other",
            vec![allow(Match {
                namespaces: vec![s("shop")],
                ..m()
            })],
            from("web", "client"),
            Some("no ALLOW"),
        ),
        (
            "notNamespaces",
            vec![allow(Match {
                not_namespaces: vec![s("shop")],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "namespace prefix",
            vec![allow(Match {
                namespaces: vec![s("sh*")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "namespace, plaintext never matches",
            vec![allow(Match {
                namespaces: vec![s("shop")],
                ..m()
            })],
            PLAIN(),
            Some("no ALLOW"),
        ),
        (
            "DENY notNamespaces holds for plaintext",
            vec![deny(Match {
                not_namespaces: vec![s("shop")],
                ..m()
            })],
            PLAIN(),
            Some("deny"),
        ),
        (
            "service account",
            vec![allow(Match {
                service_accounts: vec![ServiceAccountMatch {
                    namespace: "shop".into(),
                    service_account: "client".into(),
                }],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "service account, other",
            vec![allow(Match {
                service_accounts: vec![ServiceAccountMatch {
                    namespace: "shop".into(),
                    service_account: "x".into(),
                }],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "notServiceAccounts",
            vec![allow(Match {
                not_service_accounts: vec![ServiceAccountMatch {
                    namespace: "shop".into(),
                    service_account: "client".into(),
                }],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "source ip block",
            vec![allow(Match {
                source_ips: vec![net("10.0.0.0/8")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "source ip block, outside",
            vec![allow(Match {
                source_ips: vec![net("10.0.0.0/8")],
                ..m()
            })],
            ip_conn("192.168.1.1"),
            Some("no ALLOW"),
        ),
        (
            "notSourceIps",
            vec![allow(Match {
                not_source_ips: vec![net("10.1.0.0/16")],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "source ip v6 block",
            vec![allow(Match {
                source_ips: vec![net("fd00::/8")],
                ..m()
            })],
            ip_conn("fd00::5"),
            None,
        ),
        (
            "source single ip",
            vec![allow(Match {
                source_ips: vec![net("10.1.2.3")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "v4 block never holds a v6 peer",
            vec![allow(Match {
                source_ips: vec![net("0.0.0.0/0")],
                ..m()
            })],
            ip_conn("fd00::5"),
            Some("no ALLOW"),
        ),
        (
            "destination ip",
            vec![allow(Match {
                destination_ips: vec![net("10.9.9.9/32")],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "notDestinationIps",
            vec![allow(Match {
                not_destination_ips: vec![net("10.9.0.0/16")],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "destination port",
            vec![allow(Match {
                destination_ports: vec![8080],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "destination port, other",
            vec![allow(Match {
                destination_ports: vec![8080],
                ..m()
            })],
            port(9090),
            Some("no ALLOW"),
        ),
        (
            "notDestinationPorts",
            vec![allow(Match {
                not_destination_ports: vec![9090],
                ..m()
            })],
            port(9090),
            Some("no ALLOW"),
        ),
        (
            "DENY a port",
            vec![deny(Match {
                destination_ports: vec![9090],
                ..m()
            })],
            port(9090),
            Some("deny"),
        ),
        (
            "DENY a port, other port",
            vec![deny(Match {
                destination_ports: vec![9090],
                ..m()
            })],
            CLIENT(),
            None,
        ),
        (
            "fields of a match AND",
            vec![allow(Match {
                principals: vec![s("*")],
                destination_ports: vec![9090],
                ..m()
            })],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "matches of a clause OR",
            vec![policy(
                "allow",
                Action::Allow,
                vec![
                    Match {
                        destination_ports: vec![1],
                        ..m()
                    },
                    Match {
                        destination_ports: vec![8080],
                        ..m()
                    },
                ],
            )],
            CLIENT(),
            None,
        ),
        (
            "clauses of a rule AND",
            vec![Authorization {
                rules: vec![Rule {
                    clauses: vec![
                        Clause {
                            matches: vec![Match {
                                principals: vec![s("*")],
                                ..m()
                            }],
                        },
                        Clause {
                            matches: vec![Match {
                                destination_ports: vec![9090],
                                ..m()
                            }],
                        },
                    ],
                }],
                ..allow(m())
            }],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "rules of a policy OR",
            vec![Authorization {
                rules: vec![
                    Rule {
                        clauses: vec![Clause {
                            matches: vec![Match {
                                destination_ports: vec![1],
                                ..m()
                            }],
                        }],
                    },
                    Rule {
                        clauses: vec![Clause {
                            matches: vec![Match {
                                destination_ports: vec![8080],
                                ..m()
                            }],
                        }],
                    },
                ],
                ..allow(m())
            }],
            CLIENT(),
            None,
        ),
        (
            "ALLOW without rules allows nothing",
            vec![Authorization {
                rules: vec![],
                ..allow(m())
            }],
            CLIENT(),
            Some("no ALLOW"),
        ),
        (
            "an empty rule matches everything",
            vec![Authorization {
                rules: vec![Rule::default()],
                ..allow(m())
            }],
            PLAIN(),
            None,
        ),
        (
            "DENY wins over ALLOW",
            vec![
                allow(m()),
                deny(Match {
                    principals: vec![s("*")],
                    ..m()
                }),
            ],
            CLIENT(),
            Some("deny"),
        ),
        (
            "non-matching DENY, matching ALLOW",
            vec![
                allow(m()),
                deny(Match {
                    destination_ports: vec![1],
                    ..m()
                }),
            ],
            CLIENT(),
            None,
        ),
        (
            "second ALLOW matches",
            vec![
                policy(
                    "a1",
                    Action::Allow,
                    vec![Match {
                        destination_ports: vec![1],
                        ..m()
                    }],
                ),
                policy("a2", Action::Allow, vec![m()]),
            ],
            CLIENT(),
            None,
        ),
        (
            "dry-run DENY only reports",
            vec![Authorization {
                dry_run: true,
                ..deny(m())
            }],
            CLIENT(),
            None,
        ),
        (
            "dry-run ALLOW does not make others deny",
            vec![Authorization {
                dry_run: true,
                ..allow(Match {
                    destination_ports: vec![1],
                    ..m()
                })
            }],
            CLIENT(),
            None,
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, policies, conn, want) in &cases {
        let got = verdict(&decide(policies, conn));
        let want = want.map(str::to_string);
        match (&got, &want) {
            (Some(g), Some(w)) => {
                assert!(g.starts_with(w.as_str()), "{name}: denied by {g}, want {w}")
            }
            _ => assert_eq!(got, want, "{name}"),
        }
    }
}

#[test]
fn decisions_name_the_deciding_policy_and_dry_run_hits() {
    let allow_all = Authorization {
        rules: vec![Rule::default()],
        ..allow(Match::default())
    };
    let o = decide(std::slice::from_ref(&allow_all), &CLIENT());
    assert_eq!(
        o.decision,
        Decision::Allow {
            by: Some("shop/allow".into())
        }
    );
    let dry = Authorization {
        dry_run: true,
        name: "would-deny".into(),
        ..deny(Match::default())
    };
    let o = decide(&[allow_all, dry], &CLIENT());
    assert_eq!(
        o.dry_run_hits,
        vec![("shop/would-deny".to_string(), Action::Deny)]
    );
    assert!(o.decision.is_allowed());
}

#[test]
fn string_and_ip_syntax() {
    assert_eq!(StringMatch::parse("*"), StringMatch::Presence);
    assert_eq!(StringMatch::parse("a*"), StringMatch::Prefix("a".into()));
    assert_eq!(StringMatch::parse("*a"), StringMatch::Suffix("a".into()));
    assert_eq!(StringMatch::parse("a"), StringMatch::Exact("a".into()));
    assert!(!StringMatch::Presence.matches(""));
    for bad in ["10.0.0.0/33", "fd00::/129", "nope", "10.0.0.1/x"] {
        assert!(IpNet::parse(bad).is_none(), "{bad}");
    }
    assert!(net("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
    assert!(
        net("10.0.0.0/8").contains("::ffff:10.1.1.1".parse().unwrap()),
        "mapped addresses count as IPv4"
    );
}

fn pa(scope: PeerScope, ns: &str, mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuthentication {
    PeerAuthentication {
        name: format!("{scope:?}"),
        namespace: ns.into(),
        scope,
        workloads: if scope == PeerScope::Workload {
            vec!["w1".into()]
        } else {
            vec![]
        },
        mode,
        port_modes: ports.iter().copied().collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn peer_authentication_precedence() {
    use MtlsMode::*;
    let mesh_strict = pa(PeerScope::Mesh, "istio-system", Strict, &[]);
    let cases: Vec<(&str, Vec<PeerAuthentication>, &str, u16, MtlsMode)> = vec![
        ("nothing set: permissive", vec![], "w1", 80, Permissive),
        ("mesh strict", vec![mesh_strict.clone()], "w1", 80, Strict),
        (
            "namespace permissive overrides mesh",
            vec![
                mesh_strict.clone(),
                pa(PeerScope::Namespace, "shop", Permissive, &[]),
            ],
            "w1",
            80,
            Permissive,
        ),
        (
            "port-level permissive",
            vec![pa(
                PeerScope::Namespace,
                "shop",
                Strict,
                &[(8080, Permissive)],
            )],
            "w1",
            8080,
            Permissive,
        ),
        (
            "other ports stay strict",
            vec![pa(
                PeerScope::Namespace,
                "shop",
                Strict,
                &[(8080, Permissive)],
            )],
            "w1",
            9090,
            Strict,
        ),
        (
            "workload overrides namespace",
            vec![
                pa(PeerScope::Namespace, "shop", Strict, &[]),
                pa(PeerScope::Workload, "shop", Permissive, &[]),
            ],
            "w1",
            80,
            Permissive,
        ),
        (
            "other workloads keep the namespace mode",
            vec![
                pa(PeerScope::Namespace, "shop", Strict, &[]),
                pa(PeerScope::Workload, "shop", Permissive, &[]),
            ],
            "w2",
            80,
            Strict,
        ),
        (
            "unset inherits",
            vec![
                pa(PeerScope::Namespace, "shop", Strict, &[]),
                pa(PeerScope::Workload, "shop", Unset, &[]),
            ],
            "w1",
            80,
            Strict,
        ),
        (
            "port-level strict under permissive",
            vec![pa(
                PeerScope::Mesh,
                "istio-system",
                Permissive,
                &[(5432, Strict)],
            )],
            "w1",
            5432,
            Strict,
        ),
        (
            "another namespace's policy does not apply",
            vec![pa(PeerScope::Namespace, "web", Strict, &[])],
            "w1",
            80,
            Permissive,
        ),
    ];
    for (name, policies, uid, port, want) in cases {
        assert_eq!(effective_mode(&policies, "shop", uid, port), want, "{name}");
        // What ztunnel enforces is the converted DENY: it refuses plaintext exactly there,
        // and never a peer with an identity.
        let chain = chain(
            &policies,
            |p| p,
            "shop",
            |p| p.workloads.iter().any(|w| w == uid),
        );
        let converted: Vec<Authorization> =
            strict_policy(&chain, "istio-system").into_iter().collect();
        let plain = Conn { port, ..PLAIN() };
        let refused = verdict(&decide(&converted, &plain));
        assert_eq!(refused.is_some(), want == Strict, "{name}: {refused:?}");
        if let Some(by) = refused {
            assert!(
                by.starts_with("istio-system/converted_peer_authentication_strict"),
                "{name}: {by}"
            );
        }
        let mtls = Conn { port, ..CLIENT() };
        assert_eq!(verdict(&decide(&converted, &mtls)), None, "{name}: mTLS");
    }
}

mod crd_translation {
    use crate::crd::*;
    use crate::*;

    fn policy(yaml: &str) -> Result<Option<Translated>, CrdError> {
        let p: AuthorizationPolicy = serde_yaml::from_str(yaml).unwrap();
        authorization_policy(&p, "istio-system")
    }

    #[test]
    fn scopes_actions_and_rules() {
        let t = policy(
            "metadata: {name: allow-sleep, namespace: shop}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/sleep]}}, {source: {namespaces: [ops]}}]
    to: [{operation: {ports: ['8080']}}]
    when: [{key: source.ip, values: [10.0.0.0/8]}]
",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.policy.scope, Scope::WorkloadSelector);
        assert_eq!(t.selector.unwrap()["app"], "httpbin");
        let clauses = &t.policy.rules[0].clauses;
        assert_eq!(clauses.len(), 3, "from, to and one condition");
        assert_eq!(clauses[0].matches.len(), 2, "two sources are alternatives");
        assert_eq!(clauses[1].matches[0].destination_ports, vec![8080]);
        assert_eq!(
            clauses[2].matches[0].source_ips,
            vec![IpNet::parse("10.0.0.0/8").unwrap()]
        );

        let mesh = policy("metadata: {name: deny-all, namespace: istio-system}\nspec: {action: DENY, rules: [{}]}\n").unwrap().unwrap();
        assert_eq!(
            (mesh.policy.scope, mesh.policy.action),
            (Scope::Global, Action::Deny)
        );
        let ns = policy("metadata: {name: allow-nothing, namespace: shop}\nspec: {}\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (ns.policy.scope, ns.policy.action, ns.policy.rules.len()),
            (Scope::Namespace, Action::Allow, 0)
        );
    }

    #[test]
    fn audit_custom_waypoints_and_bad_fields() {
        for action in ["AUDIT", "CUSTOM"] {
            let err = policy(&format!(
                "metadata: {{name: p, namespace: shop}}\nspec: {{action: {action}}}\n"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("not supported at L4"), "{err}");
        }
        let waypoint = policy("metadata: {name: p, namespace: shop}\nspec: {targetRefs: [{kind: Service, name: web}]}\n").unwrap();
        assert!(
            waypoint.is_none(),
            "targetRefs policies belong to waypoints"
        );
        let err = policy("metadata: {name: p, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.rules[0].from[0].source.ipBlocks[0]"),
            "{err}"
        );
        let err = policy("metadata: {name: p, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [/sa]}}]}]}\n").unwrap_err();
        assert!(err.to_string().contains("serviceAccounts[0]"), "{err}");
    }

    /// HTTP attributes as istiod translates them for ztunnel: an ALLOW rule that uses any
    /// is left out whole, a DENY rule keeps its L4 part; what was found is reported.
    #[test]
    fn http_attributes_drop_allow_rules_and_narrow_deny_rules_to_l4() {
        let conn = |sa: &str, port: u16| {
            (
                amesh_identity::Identity::new("cluster.local", "shop", sa),
                port,
            )
        };
        let allowed = |t: &Translated, (id, port): (amesh_identity::Identity, u16)| {
            let c = Connection {
                source: Some(&id),
                source_ip: "10.0.0.1".parse().unwrap(),
                destination_ip: "10.0.0.2".parse().unwrap(),
                destination_port: port,
            };
            evaluate(&[&t.policy], &c).decision.is_allowed()
        };
        // (service account, port, allowed?)
        type Expect<'a> = &'a [(&'a str, u16, bool)];
        let cases: Vec<(&str, &str, Expect, &[&str])> = vec![
            (
                "ALLOW with methods: the rule is left out, nothing is allowed",
                "action: ALLOW\n  rules: [{from: [{source: {principals: ['*/sa/a']}}], to: [{operation: {ports: ['8080'], methods: [GET]}}]}]",
                &[("a", 8080, false), ("b", 8080, false)],
                &["methods"],
            ),
            (
                "ALLOW: a plain rule next to an L7 one still allows",
                "action: ALLOW\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n  - from: [{source: {principals: ['*/sa/a']}}]",
                &[("a", 80, true), ("b", 80, false)],
                &["paths"],
            ),
            (
                "ALLOW: one L7 alternative drops the whole rule",
                "action: ALLOW\n  rules: [{to: [{operation: {ports: ['80']}}, {operation: {hosts: [x.example]}}]}]",
                &[("a", 80, false)],
                &["hosts"],
            ),
            (
                "ALLOW with requestPrincipals: X does not get in without a token",
                "action: ALLOW\n  rules: [{from: [{source: {principals: ['*/sa/a'], requestPrincipals: ['*']}}]}]",
                &[("a", 80, false)],
                &["requestPrincipals"],
            ),
            (
                "ALLOW with remoteIpBlocks",
                "action: ALLOW\n  rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]",
                &[("a", 80, false)],
                &["remoteIpBlocks"],
            ),
            (
                "ALLOW with when remote.ip and a header",
                "action: ALLOW\n  rules: [{when: [{key: remote.ip, values: [10.0.0.1]}, {key: 'request.headers[x-user]', values: [admin]}]}]",
                &[("a", 80, false)],
                &["remote.ip", "request.headers[x-user]"],
            ),
            (
                "ALLOW with when source.ip is L4",
                "action: ALLOW\n  rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}]}]",
                &[("a", 80, true)],
                &[],
            ),
            (
                "DENY with methods denies on its L4 part: every method, only that port",
                "action: DENY\n  rules: [{from: [{source: {principals: ['*/sa/a']}}], to: [{operation: {ports: ['8080'], methods: [DELETE]}}]}]",
                &[("a", 8080, false), ("a", 9090, true), ("b", 8080, true)],
                &["methods"],
            ),
            (
                "DENY with a header condition denies on the rest",
                "action: DENY\n  rules: [{from: [{source: {principals: ['*/sa/a']}}], when: [{key: 'request.headers[x-user]', values: [admin]}]}]",
                &[("a", 80, false), ("b", 80, true)],
                &["request.headers[x-user]"],
            ),
        ];
        for (name, spec, conns, http) in cases {
            let t = policy(&format!(
                "metadata: {{name: p, namespace: shop}}\nspec:\n  {spec}\n"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(t.http_attributes, http.to_vec(), "{name}");
            assert_eq!(t.http_warning().is_some(), !http.is_empty(), "{name}");
            for (sa, port, want) in conns {
                assert_eq!(
                    allowed(&t, conn(sa, *port)),
                    *want,
                    "{name}: {sa} to {port}"
                );
            }
        }
        // Nothing private reaches the wire: an Istio ztunnel reads the same policy.
        let t = policy("metadata: {name: p, namespace: shop}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n").unwrap().unwrap();
        let wire = crate::wire::to_proto(&t.policy);
        assert!(
            wire.groups
                .iter()
                .flat_map(|g| &g.rules)
                .flat_map(|r| &r.matches)
                .all(|m| m.extensions.is_empty())
        );
    }

    #[test]
    fn a_bare_service_account_is_in_the_policy_namespace() {
        let t = policy("metadata: {name: p, namespace: shop}\nspec: {rules: [{from: [{source: {serviceAccounts: [cart, other/web]}}]}]}\n").unwrap().unwrap();
        let m = &t.policy.rules[0].clauses[0].matches[0];
        let names: Vec<(&str, &str)> = m
            .service_accounts
            .iter()
            .map(|a| (a.namespace.as_str(), a.service_account.as_str()))
            .collect();
        assert_eq!(names, [("shop", "cart"), ("other", "web")]);
    }

    #[test]
    fn peer_authentication_resources() {
        let p: PeerAuthenticationResource = serde_yaml::from_str(
            "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {'9090': {mode: PERMISSIVE}}}\n",
        )
        .unwrap();
        let (pa, selector) = peer_authentication(&p, "istio-system").unwrap();
        assert_eq!(
            (pa.scope, pa.mode, selector),
            (PeerScope::Mesh, MtlsMode::Strict, None)
        );
        assert_eq!(pa.port_modes[&9090], MtlsMode::Permissive);
        let p: PeerAuthenticationResource = serde_yaml::from_str("metadata: {name: off, namespace: shop}\nspec: {selector: {matchLabels: {app: a}}, mtls: {mode: DISABLE}}\n").unwrap();
        let (pa, selector) = peer_authentication(&p, "istio-system").unwrap();
        assert_eq!(
            (pa.scope, pa.mode),
            (PeerScope::Workload, MtlsMode::Unset),
            "DISABLE is ignored"
        );
        assert!(selector.is_some());
    }
}
