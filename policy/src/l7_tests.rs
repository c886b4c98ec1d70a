//! The waypoint's HTTP attributes: each one's matching with its negative form, path
//! templates, the translation of targetRef policies, and the evaluation order.
#![allow(clippy::unwrap_used, reason = "tests")]

use crate::{
    Action, Connection, Decision, StringMatch,
    crd::{self, AuthorizationPolicy},
    evaluate_request,
    l7::{HttpMatch, Keyed, PathMatch, Request, RequestAuth},
};
use amesh_identity::Identity;
use std::net::IpAddr;

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn auth() -> RequestAuth {
    RequestAuth {
        principal: "https://issuer.example/alice".into(),
        audiences: vec!["shop".into(), "admin".into()],
        presenter: "web-client".into(),
        claims: serde_json::json!({
            "sub": "alice", "groups": ["dev", "ops"], "org": {"team": "blue"}, "level": 3
        }),
    }
}

struct Req {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: http::HeaderMap,
    remote: IpAddr,
    auth: Option<RequestAuth>,
}

impl Req {
    fn new() -> Self {
        Self {
            method: "GET",
            host: "Web.Shop:8080",
            path: "/api/v1/items",
            headers: headers(&[("x-env", "prod"), ("x-env", "canary")]),
            remote: "192.0.2.7".parse().unwrap(),
            auth: Some(auth()),
        }
    }

    fn as_request(&self) -> Request<'_> {
        Request {
            method: self.method,
            host: self.host,
            path: self.path,
            headers: &self.headers,
            remote_ip: self.remote,
            auth: self.auth.as_ref(),
            sni: None,
        }
    }
}

fn s(v: &str) -> Vec<StringMatch> {
    vec![StringMatch::parse(v)]
}

fn keyed(values: &str, not_values: &str) -> Keyed<()> {
    let list = |v: &str| {
        if v.is_empty() { vec![] } else { s(v) }
    };
    Keyed {
        key: (),
        values: list(values),
        not_values: list(not_values),
    }
}

#[test]
fn every_attribute_matches_and_its_negative_form_excludes() {
    let r = Req::new();
    let anon = Req {
        auth: None,
        ..Req::new()
    };
    let cases: Vec<(&str, HttpMatch, bool, bool)> = vec![
        // (what, match, with a token, without one)
        ("empty", HttpMatch::default(), true, true),
        (
            "host, any case, port stripped",
            HttpMatch {
                hosts: s("web.shop"),
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "host with port",
            HttpMatch {
                hosts: s("web.shop:8080"),
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "host suffix",
            HttpMatch {
                hosts: s("*.shop"),
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "other host",
            HttpMatch {
                hosts: s("api.shop"),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "notHosts",
            HttpMatch {
                not_hosts: s("web.shop"),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "method",
            HttpMatch {
                methods: s("GET"),
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "other method",
            HttpMatch {
                methods: s("POST"),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "notMethods",
            HttpMatch {
                not_methods: s("GET"),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "path prefix",
            HttpMatch {
                paths: vec![PathMatch::parse("/api/*").unwrap()],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "path exact miss",
            HttpMatch {
                paths: vec![PathMatch::parse("/api").unwrap()],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "notPaths",
            HttpMatch {
                not_paths: vec![PathMatch::parse("/api/*").unwrap()],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "template one",
            HttpMatch {
                paths: vec![PathMatch::parse("/api/{*}/items").unwrap()],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "template any",
            HttpMatch {
                paths: vec![PathMatch::parse("/api/{**}").unwrap()],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "template too short",
            HttpMatch {
                paths: vec![PathMatch::parse("/api/{*}").unwrap()],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "requestPrincipals",
            HttpMatch {
                request_principals: s("https://issuer.example/*"),
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "requestPrincipals any",
            HttpMatch {
                request_principals: s("*"),
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "notRequestPrincipals any: no token",
            HttpMatch {
                not_request_principals: s("*"),
                ..Default::default()
            },
            false,
            true,
        ),
        (
            "remote ip",
            HttpMatch {
                remote_ips: vec![crate::IpNet::parse("192.0.2.0/24").unwrap()],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "notRemoteIpBlocks",
            HttpMatch {
                not_remote_ips: vec![crate::IpNet::parse("192.0.2.7").unwrap()],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "header, any of its values",
            HttpMatch {
                headers: vec![Keyed {
                    key: "x-env".into(),
                    values: s("canary"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "header prefix",
            HttpMatch {
                headers: vec![Keyed {
                    key: "x-env".into(),
                    values: s("pro*"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "absent header",
            HttpMatch {
                headers: vec![Keyed {
                    key: "x-missing".into(),
                    values: s("*"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "absent header, notValues",
            HttpMatch {
                headers: vec![Keyed {
                    key: "x-missing".into(),
                    values: vec![],
                    not_values: s("*"),
                }],
                ..Default::default()
            },
            true,
            true,
        ),
        (
            "header notValues",
            HttpMatch {
                headers: vec![Keyed {
                    key: "x-env".into(),
                    values: vec![],
                    not_values: s("canary"),
                }],
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "claim in a list",
            HttpMatch {
                claims: vec![Keyed {
                    key: vec!["groups".into()],
                    values: s("ops"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "nested claim",
            HttpMatch {
                claims: vec![Keyed {
                    key: vec!["org".into(), "team".into()],
                    values: s("blue"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "number claim",
            HttpMatch {
                claims: vec![Keyed {
                    key: vec!["level".into()],
                    values: s("3"),
                    not_values: vec![],
                }],
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "claim notValues",
            HttpMatch {
                claims: vec![Keyed {
                    key: vec!["groups".into()],
                    values: vec![],
                    not_values: s("dev"),
                }],
                ..Default::default()
            },
            false,
            true,
        ),
        (
            "audience",
            HttpMatch {
                audiences: keyed("admin", ""),
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "other audience",
            HttpMatch {
                audiences: keyed("billing", ""),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "presenter",
            HttpMatch {
                presenters: keyed("web-*", ""),
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "not presenter",
            HttpMatch {
                presenters: keyed("", "web-client"),
                ..Default::default()
            },
            false,
            true,
        ),
        (
            "sni (none at a waypoint's HTTP)",
            HttpMatch {
                snis: keyed("*", ""),
                ..Default::default()
            },
            false,
            false,
        ),
    ];
    for (what, m, with_token, without) in cases {
        assert_eq!(
            m.matches(&r.as_request()),
            with_token,
            "{what}, with a token"
        );
        assert_eq!(
            m.matches(&anon.as_request()),
            without,
            "{what}, without a token"
        );
    }
}

#[test]
fn path_templates_are_whole_segments() {
    let t = |p: &str| PathMatch::parse(p).unwrap();
    assert!(t("/a/{*}/c").matches("/a/b/c"));
    assert!(!t("/a/{*}/c").matches("/a//c"), "{{*}} needs a segment");
    assert!(!t("/a/{*}/c").matches("/a/b/x/c"));
    assert!(t("/a/{**}").matches("/a/b/c/d"));
    assert!(t("/a/{**}").matches("/a/"));
    assert!(!t("/a/{**}").matches("/b/c"));
    for bad in ["/a/{**}/c", "/a/x{*}", "a/{*}"] {
        assert!(PathMatch::parse(bad).is_err(), "{bad}");
    }
}

fn policy(yaml: &str) -> Result<Option<crd::WaypointTranslated>, crd::CrdError> {
    let p: AuthorizationPolicy = serde_yaml::from_str(yaml).unwrap();
    crd::waypoint_policy(&p)
}

#[test]
fn targetref_policies_keep_their_http_attributes() {
    let t = policy(
        r#"
metadata: {name: api, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}, {kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["*"], notRemoteIpBlocks: [10.0.0.0/8]}}]
    to: [{operation: {methods: [DELETE], paths: ["/admin/{**}"], hosts: [web.shop]}}]
    when:
    - {key: "request.headers[X-Debug]", values: ["1"]}
    - {key: "request.auth.claims[org][team]", notValues: [red]}
    - {key: request.auth.audiences, values: [shop]}
"#,
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.policy.action, Action::Deny);
    assert_eq!(
        t.targets
            .iter()
            .map(|t| (t.kind.as_str(), t.name.as_str()))
            .collect::<Vec<_>>(),
        [("Service", "web"), ("Gateway", "wp")]
    );
    let clauses = &t.policy.rules[0].clauses;
    assert_eq!(clauses.len(), 5, "from, to and three conditions");
    assert_eq!(clauses[0].matches[0].http.request_principals, s("*"));
    assert_eq!(clauses[1].matches[0].http.methods, s("DELETE"));
    assert_eq!(clauses[2].matches[0].http.headers[0].key, "x-debug");
    assert_eq!(
        clauses[3].matches[0].http.claims[0].key,
        ["org".to_string(), "team".to_string()]
    );
    // A policy without a target is ztunnel's.
    assert!(
        policy("metadata: {name: x, namespace: shop}\nspec: {}")
            .unwrap()
            .is_none()
    );
}

#[test]
fn what_a_waypoint_cannot_enforce_is_refused_with_the_reason() {
    let cases = [
        (
            "action: CUSTOM",
            "spec.provider.name",
            "needs the name of an extension provider",
        ),
        ("action: ALLOWED", "spec.action", "not an action"),
        (
            "rules: [{when: [{key: experimental.envoy.filters.http.foo, values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "Envoy filter metadata",
        ),
        (
            "rules: [{when: [{key: request.foo, values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "not a condition key",
        ),
        (
            "rules: [{when: [{key: \"request.auth.claims[]\", values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "request.auth.claims[<name>]",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/{**}/b\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
            "last segment",
        ),
    ];
    for (spec, field, reason) in cases {
        let yaml = format!(
            "metadata: {{name: p, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: web}}]\n  {spec}\n"
        );
        let e = policy(&yaml).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(reason), "{spec}: {e}");
    }
    let e = policy("metadata: {name: p, namespace: shop}\nspec: {targetRefs: [{kind: Pod, group: \"\", name: x}]}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("targets a Gateway, a GatewayClass or a Service"),
        "{e}"
    );
}

#[test]
fn deny_comes_before_allow_audit_only_counts_and_tcp_gets_l4_rules() {
    let translate = |yaml: &str| policy(yaml).unwrap().unwrap().policy;
    let deny = translate(
        "metadata: {name: no-delete, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  action: DENY\n  rules: [{to: [{operation: {methods: [DELETE]}}]}]\n",
    );
    let allow = translate(
        "metadata: {name: readers, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{to: [{operation: {methods: [GET, DELETE]}}]}]\n",
    );
    let audit = translate(
        "metadata: {name: watch, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/api/*\"]}}]}]\n",
    );
    let id: Identity = "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap();
    let conn = Connection {
        source: Some(&id),
        source_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.96.0.10".parse().unwrap(),
        destination_port: 80,
    };
    let policies = [&deny, &allow, &audit];
    let with = |method: &'static str| {
        let r = Req {
            method,
            ..Req::new()
        };
        evaluate_request(&policies, &conn, Some(&r.as_request()))
    };
    let get = with("GET");
    assert_eq!(
        get.decision,
        Decision::Allow {
            by: Some("shop/readers".into())
        }
    );
    assert_eq!(get.audit_hits, ["shop/watch"], "AUDIT counted, no effect");
    assert_eq!(
        with("DELETE").decision,
        Decision::Deny {
            by: "shop/no-delete".into()
        }
    );
    assert_eq!(
        with("POST").decision,
        Decision::Deny {
            by: "no ALLOW policy matched".into()
        }
    );
    // Relayed as TCP: the ALLOW needing a method allows nothing; the DENY matches on its
    // (empty) L4 part, so it refuses.
    let tcp = evaluate_request(&policies, &conn, None);
    assert_eq!(
        tcp.decision,
        Decision::Deny {
            by: "shop/no-delete".into()
        }
    );
    // A rule with an HTTP operation next to a port-only one is left out whole for TCP.
    let mixed = translate(
        "metadata: {name: mixed, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{to: [{operation: {methods: [GET]}}, {operation: {ports: [\"80\"]}}]}]\n",
    );
    assert_eq!(
        evaluate_request(&[&mixed], &conn, None).decision,
        Decision::Deny {
            by: "no ALLOW policy matched".into()
        },
        "TCP: an ALLOW rule that needs HTTP anywhere allows nothing"
    );
    let tcp_allow_only = evaluate_request(&[&allow], &conn, None);
    assert_eq!(
        tcp_allow_only.decision,
        Decision::Deny {
            by: "no ALLOW policy matched".into()
        }
    );
}
