//! External authorization (AuthorizationPolicy's CUSTOM action): Istio's mesh-config
//! extension providers, as the control plane reads them (`extensionProviders` in the
//! `mesh` configuration), and the resolved form a waypoint calls.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Istio's MeshConfig, the part amesh reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub envoy_ext_authz_http: Option<EnvoyExtAuthzHttp>,
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<EnvoyExtAuthzGrpc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyExtAuthzHttp {
    /// `[<namespace>/]<hostname>`.
    pub service: String,
    pub port: u32,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyExtAuthzGrpc {
    /// `[<namespace>/]<hostname>`.
    pub service: String,
    pub port: u32,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

/// Istio's `EnvoyExternalAuthorizationRequestBody`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestBodyInCheck {
    #[serde(default)]
    pub max_request_bytes: Option<u32>,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// How a waypoint talks to an authorizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// Envoy's HTTP contract: a request like the client's, 200 allows.
    #[default]
    Http,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
}

/// The client's body in the check (Envoy's `with_request_body`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BodyInCheck {
    /// At most this many bytes are buffered and sent.
    pub max_bytes: u32,
    /// A longer body: its first `max_bytes` are sent (else the client gets 413).
    pub allow_partial: bool,
    /// gRPC: the body as bytes (`raw_body`) rather than as text (`body`).
    pub pack_as_bytes: bool,
}

/// An external authorizer as a waypoint calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Authorizer {
    pub provider: String,
    pub api: Api,
    /// The Service (`<namespace>/<hostname>`) and port.
    pub service: String,
    pub port: u16,
    pub timeout_ms: u64,
    pub path_prefix: String,
    pub fail_open: bool,
    /// The status when the authorizer cannot be reached (Istio's default 403).
    pub status_on_error: u16,
    /// Request headers sent along, as Istio's patterns (`abc`, `abc*`, `*abc`; lower-case;
    /// HTTP always sends host, method, path, authorization; gRPC sends every header).
    pub include_headers: Vec<String>,
    pub additional_headers: BTreeMap<String, String>,
    pub to_upstream_on_allow: Vec<String>,
    /// Empty: every header of the authorizer's denial.
    pub to_downstream_on_deny: Vec<String>,
    pub to_downstream_on_allow: Vec<String>,
    /// The client's body in the check, when asked.
    pub body: Option<BodyInCheck>,
}

/// Whether header `name` matches one of Istio's header patterns: exact, `prefix*` or
/// `*suffix`, without regard to case (`*` alone matches every header).
pub fn header_listed(patterns: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        if p == "*" {
            true
        } else if let Some(prefix) = p.strip_suffix('*') {
            name.starts_with(prefix)
        } else if let Some(suffix) = p.strip_prefix('*') {
            name.ends_with(suffix)
        } else {
            name == p
        }
    })
}

/// The settings both provider kinds share, borrowed from either.
struct Common<'a> {
    service: &'a str,
    port: u32,
    timeout: Option<&'a str>,
    status_on_error: Option<&'a str>,
    body: Option<&'a RequestBodyInCheck>,
}

/// Resolves provider `name` for a policy: the authorizer, or why it cannot be used.
pub fn resolve(config: &MeshConfig, name: &str, domain_suffix: &str) -> Result<Authorizer, String> {
    let p = config
        .extension_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("extension provider {name:?} is not in the mesh configuration"))?;
    let (api, common) = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
        (Some(h), None) => (
            Api::Http,
            Common {
                service: &h.service,
                port: h.port,
                timeout: h.timeout.as_deref(),
                status_on_error: h.status_on_error.as_deref(),
                body: h.include_request_body_in_check.as_ref(),
            },
        ),
        (None, Some(g)) => (
            Api::Grpc,
            Common {
                service: &g.service,
                port: g.port,
                timeout: g.timeout.as_deref(),
                status_on_error: g.status_on_error.as_deref(),
                body: g.include_request_body_in_check.as_ref(),
            },
        ),
        (Some(_), Some(_)) => {
            return Err(format!(
                "extension provider {name:?} declares both envoyExtAuthzHttp and envoyExtAuthzGrpc"
            ));
        }
        (None, None) => {
            return Err(format!(
                "extension provider {name:?} is not an external authorizer"
            ));
        }
    };
    let (namespace, hostname) = match common.service.split_once('/') {
        Some((ns, host)) => (ns.to_string(), host.to_string()),
        None => {
            // `<name>.<namespace>.svc.<suffix>`
            let ns = common
                .service
                .strip_suffix(&format!(".svc.{domain_suffix}"))
                .and_then(|rest| rest.split('.').nth(1))
                .ok_or_else(|| {
                    format!(
                        "extension provider {name:?}: service {:?} is neither <namespace>/<host> nor <name>.<namespace>.svc.{domain_suffix}",
                        common.service
                    )
                })?;
            (ns.to_string(), common.service.to_string())
        }
    };
    let port = u16::try_from(common.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("extension provider {name:?}: {} is not a port", common.port))?;
    let timeout_ms = match common.timeout {
        None => 600_000,
        Some(t) => parse_duration_ms(t).ok_or_else(|| {
            format!("extension provider {name:?}: timeout {t:?} is not a duration")
        })?,
    };
    let status_on_error = match common.status_on_error {
        None => 403,
        Some(s) => s
            .parse::<u16>()
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| {
                format!("extension provider {name:?}: statusOnError {s:?} is not a status")
            })?,
    };
    // Envoy refuses a body buffer of no bytes (`max_request_bytes` must be above 0).
    let body = match common.body {
        None => None,
        Some(b) => Some(BodyInCheck {
            max_bytes: b.max_request_bytes.filter(|m| *m > 0).ok_or_else(|| {
                format!(
                    "extension provider {name:?}: includeRequestBodyInCheck needs maxRequestBytes above 0"
                )
            })?,
            allow_partial: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }),
    };
    let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut a = Authorizer {
        provider: name.into(),
        api,
        service: format!("{namespace}/{hostname}"),
        port,
        timeout_ms,
        fail_open: false,
        status_on_error,
        body,
        ..Authorizer::default()
    };
    match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
        (Some(h), _) => {
            a.path_prefix = h.path_prefix.clone().unwrap_or_default();
            a.fail_open = h.fail_open;
            a.include_headers = lower(&h.include_request_headers_in_check);
            a.additional_headers = h.include_additional_headers_in_check.clone();
            a.to_upstream_on_allow = lower(&h.headers_to_upstream_on_allow);
            a.to_downstream_on_deny = lower(&h.headers_to_downstream_on_deny);
            a.to_downstream_on_allow = lower(&h.headers_to_downstream_on_allow);
        }
        (None, Some(g)) => a.fail_open = g.fail_open,
        (None, None) => {}
    }
    Ok(a)
}

/// `1.5s`, `300ms`, `2m`: protobuf-style durations as Istio writes them.
fn parse_duration_ms(t: &str) -> Option<u64> {
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    };
    (ms >= 0.0).then_some(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> MeshConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn providers_resolve_as_istio_names_them() {
        let c = config(
            r#"
extensionProviders:
- name: http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 1.5s
    includeRequestHeadersInCheck: [X-Ext-Authz]
    headersToUpstreamOnAllow: [x-user]
    statusOnError: "503"
- name: ns-form
  envoyExtAuthzHttp: {service: foo/authz.example.com, port: 9000}
- name: grpc
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9000
    failOpen: true
    includeRequestBodyInCheck: {maxRequestBytes: 16, allowPartialMessage: true, packAsBytes: true}
- name: no-bytes
  envoyExtAuthzHttp: {service: foo/a, port: 1, includeRequestBodyInCheck: {allowPartialMessage: true}}
- name: both
  envoyExtAuthzHttp: {service: foo/a, port: 1}
  envoyExtAuthzGrpc: {service: foo/a, port: 1}
"#,
        );
        let a = resolve(&c, "http", "cluster.local").unwrap();
        assert_eq!(a.service, "foo/ext-authz.foo.svc.cluster.local");
        assert_eq!((a.port, a.timeout_ms, a.status_on_error), (8000, 1500, 503));
        assert_eq!(a.include_headers, ["x-ext-authz"]);
        assert_eq!(
            resolve(&c, "ns-form", "cluster.local").unwrap().service,
            "foo/authz.example.com"
        );
        assert_eq!(
            resolve(&c, "ns-form", "cluster.local").unwrap().timeout_ms,
            600_000
        );
        let g = resolve(&c, "grpc", "cluster.local").unwrap();
        assert_eq!((g.api, g.port, g.fail_open), (Api::Grpc, 9000, true));
        assert_eq!(
            g.body,
            Some(BodyInCheck {
                max_bytes: 16,
                allow_partial: true,
                pack_as_bytes: true
            })
        );
        assert_eq!(a.api, Api::Http);
        assert_eq!(a.body, None);
        assert!(
            resolve(&c, "no-bytes", "cluster.local")
                .unwrap_err()
                .contains("maxRequestBytes above 0")
        );
        assert!(
            resolve(&c, "both", "cluster.local")
                .unwrap_err()
                .contains("declares both")
        );
        assert!(
            resolve(&c, "missing", "cluster.local")
                .unwrap_err()
                .contains("not in the mesh configuration")
        );
    }

    #[test]
    fn header_patterns_are_exact_prefix_or_suffix() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(header_listed(&p(&["x-ext-authz"]), "X-Ext-Authz"));
        assert!(!header_listed(&p(&["x-ext-authz"]), "x-ext-authz-user"));
        assert!(header_listed(&p(&["x-ext-*"]), "x-ext-authz-user"));
        assert!(!header_listed(&p(&["x-ext-*"]), "x-other"));
        assert!(header_listed(&p(&["*-user"]), "x-ext-authz-user"));
        assert!(!header_listed(&p(&["*-user"]), "x-user-id"));
        assert!(header_listed(&p(&["*"]), "anything"));
        assert!(!header_listed(&[], "anything"));
    }
}
