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
    pub envoy_ext_authz_grpc: Option<serde_json::Value>,
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
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// An HTTP authorizer as a waypoint calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpAuthorizer {
    pub provider: String,
    /// The Service (`<namespace>/<hostname>`) and port.
    pub service: String,
    pub port: u16,
    pub timeout_ms: u64,
    pub path_prefix: String,
    pub fail_open: bool,
    /// The status when the authorizer cannot be reached (Istio's default 403).
    pub status_on_error: u16,
    /// Request headers sent along (lower-case; always: host, method, path, authorization).
    pub include_headers: Vec<String>,
    pub additional_headers: BTreeMap<String, String>,
    pub to_upstream_on_allow: Vec<String>,
    /// Empty: every header of the authorizer's denial.
    pub to_downstream_on_deny: Vec<String>,
    pub to_downstream_on_allow: Vec<String>,
}

/// Resolves provider `name` for a policy: the HTTP authorizer, or why it cannot be used.
pub fn resolve(
    config: &MeshConfig,
    name: &str,
    domain_suffix: &str,
) -> Result<HttpAuthorizer, String> {
    let p = config
        .extension_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("extension provider {name:?} is not in the mesh configuration"))?;
    let Some(h) = &p.envoy_ext_authz_http else {
        return Err(if p.envoy_ext_authz_grpc.is_some() {
            format!(
                "extension provider {name:?}: envoyExtAuthzGrpc is not supported yet (envoyExtAuthzHttp is)"
            )
        } else {
            format!("extension provider {name:?} is not an external authorizer")
        });
    };
    let (namespace, hostname) = match h.service.split_once('/') {
        Some((ns, host)) => (ns.to_string(), host.to_string()),
        None => {
            // `<name>.<namespace>.svc.<suffix>`
            let ns = h
                .service
                .strip_suffix(&format!(".svc.{domain_suffix}"))
                .and_then(|rest| rest.split('.').nth(1))
                .ok_or_else(|| {
                    format!(
                        "extension provider {name:?}: service {:?} is neither <namespace>/<host> nor <name>.<namespace>.svc.{domain_suffix}",
                        h.service
                    )
                })?;
            (ns.to_string(), h.service.clone())
        }
    };
    let port = u16::try_from(h.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("extension provider {name:?}: {} is not a port", h.port))?;
    let timeout_ms = match &h.timeout {
        None => 600_000,
        Some(t) => parse_duration_ms(t).ok_or_else(|| {
            format!("extension provider {name:?}: timeout {t:?} is not a duration")
        })?,
    };
    let status_on_error = match &h.status_on_error {
        None => 403,
        Some(s) => s
            .parse::<u16>()
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| {
                format!("extension provider {name:?}: statusOnError {s:?} is not a status")
            })?,
    };
    let lower = |v: &[String]| v.iter().map(|h| h.to_ascii_lowercase()).collect();
    Ok(HttpAuthorizer {
        provider: name.into(),
        service: format!("{namespace}/{hostname}"),
        port,
        timeout_ms,
        path_prefix: h.path_prefix.clone().unwrap_or_default(),
        fail_open: h.fail_open,
        status_on_error,
        include_headers: lower(&h.include_request_headers_in_check),
        additional_headers: h.include_additional_headers_in_check.clone(),
        to_upstream_on_allow: lower(&h.headers_to_upstream_on_allow),
        to_downstream_on_deny: lower(&h.headers_to_downstream_on_deny),
        to_downstream_on_allow: lower(&h.headers_to_downstream_on_allow),
    })
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
  envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}
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
        assert!(
            resolve(&c, "grpc", "cluster.local")
                .unwrap_err()
                .contains("envoyExtAuthzGrpc is not supported yet")
        );
        assert!(
            resolve(&c, "missing", "cluster.local")
                .unwrap_err()
                .contains("not in the mesh configuration")
        );
    }
}
