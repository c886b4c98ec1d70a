//! `amesh ztunnel-config`: the views `istioctl ztunnel-config` gives of a ztunnel (workloads,
//! services, policies, certificates), for users without istioctl, read from the same Istio-
//! shaped `/config_dump` ([`crate::dump`]). Columns follow istioctl's.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde_json::Value;
use std::net::SocketAddr;

/// Which part of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    Workloads,
    Services,
    Policies,
    Certificates,
    All,
}

/// How to print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// istioctl's columns.
    Table,
    /// The dump's own JSON for the view.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("connecting to ztunnel's admin endpoint {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("asking {addr} for /config_dump: {0}", addr = .1)]
    Http(#[source] hyper::Error, SocketAddr),
    #[error("{addr} answered /config_dump with {status}")]
    Status {
        addr: SocketAddr,
        status: http::StatusCode,
    },
    #[error("reading the config dump from {addr}: {reason}")]
    Body { addr: SocketAddr, reason: String },
    #[error("the config dump from {addr} is not JSON: {source}")]
    Json {
        addr: SocketAddr,
        source: serde_json::Error,
    },
}

/// The config dump is bounded like any answer we read: 64 MiB holds a 10k-pod mesh.
const MAX_DUMP: usize = 64 << 20;

/// GETs `/config_dump` from the admin endpoint at `addr`.
pub async fn fetch(addr: SocketAddr) -> Result<Value, CliError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| CliError::Connect { addr, source })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| CliError::Http(e, addr))?;
    tokio::spawn(conn);
    let request = http::Request::get("/config_dump")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a fixed request is valid");
    let response = send
        .send_request(request)
        .await
        .map_err(|e| CliError::Http(e, addr))?;
    if !response.status().is_success() {
        return Err(CliError::Status {
            addr,
            status: response.status(),
        });
    }
    let body = Limited::new(response.into_body(), MAX_DUMP)
        .collect()
        .await
        .map_err(|e| CliError::Body {
            addr,
            reason: e.to_string(),
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|source| CliError::Json { addr, source })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, three spaces apart, as kubectl and istioctl print them.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn items<'a>(dump: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    dump[key].as_array().into_iter().flatten()
}

fn workloads(dump: &Value) -> String {
    let rows = items(dump, "workloads")
        .map(|w| {
            let ips: Vec<String> = w["workloadIps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            vec![
                s(&w["namespace"]),
                s(&w["name"]),
                ips.join(","),
                s(&w["node"]),
                match s(&w["waypoint"]["destination"]) {
                    d if d.is_empty() => "None".to_string(),
                    d => d,
                },
                s(&w["protocol"]),
            ]
        })
        .collect();
    columns(
        &[
            "NAMESPACE",
            "POD NAME",
            "ADDRESS",
            "NODE",
            "WAYPOINT",
            "PROTOCOL",
        ],
        rows,
    )
}

fn services(dump: &Value) -> String {
    let rows = items(dump, "services")
        .map(|svc| {
            let endpoints = svc["endpoints"].as_object().map_or(0, |e| e.len());
            let healthy = svc["endpoints"]
                .as_object()
                .into_iter()
                .flat_map(|e| e.values())
                .filter(|e| e["status"] == "Healthy")
                .count();
            let vips: Vec<String> = svc["vips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let v = s(v);
                    v.split_once('/')
                        .map_or(v.clone(), |(_, ip)| ip.to_string())
                })
                .collect();
            vec![
                s(&svc["namespace"]),
                s(&svc["name"]),
                vips.join(","),
                match s(&svc["waypoint"]["destination"]) {
                    d if d.is_empty() => "None".to_string(),
                    d => d,
                },
                format!("{healthy}/{endpoints}"),
            ]
        })
        .collect();
    columns(
        &[
            "NAMESPACE",
            "SERVICE NAME",
            "SERVICE VIP",
            "WAYPOINT",
            "ENDPOINTS",
        ],
        rows,
    )
}

fn policies(dump: &Value) -> String {
    let rows = items(dump, "policies")
        .map(|p| {
            vec![
                s(&p["namespace"]),
                s(&p["name"]),
                s(&p["action"]),
                s(&p["scope"]),
            ]
        })
        .collect();
    columns(&["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], rows)
}

fn certificates(dump: &Value) -> String {
    let mut rows = Vec::new();
    for c in items(dump, "certificates") {
        let parts = [("Leaf", &c["certChain"]), ("Root", &c["rootCerts"])];
        let mut any = false;
        for (i, (kind, list)) in parts.into_iter().enumerate() {
            for (j, cert) in list.as_array().into_iter().flatten().enumerate() {
                any = true;
                let kind = if i == 0 && j > 0 {
                    "Intermediate"
                } else {
                    kind
                };
                rows.push(vec![
                    s(&c["identity"]),
                    kind.to_string(),
                    s(&c["state"]),
                    (c["state"] == "Available").to_string(),
                    s(&cert["serialNumber"]),
                    s(&cert["expirationTime"]),
                    s(&cert["validFrom"]),
                ]);
            }
        }
        if !any {
            rows.push(vec![
                s(&c["identity"]),
                "Leaf".into(),
                s(&c["state"]),
                "false".into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    columns(
        &[
            "CERTIFICATE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        rows,
    )
}

/// The view of `dump` as `output`.
pub fn render(dump: &Value, view: View, output: Output) -> String {
    let key = match view {
        View::Workloads => "workloads",
        View::Services => "services",
        View::Policies => "policies",
        View::Certificates => "certificates",
        View::All => "",
    };
    match (output, view) {
        (Output::Json, View::All) => serde_json::to_string_pretty(dump).unwrap_or_default() + "\n",
        (Output::Json, _) => serde_json::to_string_pretty(&dump[key]).unwrap_or_default() + "\n",
        (Output::Table, View::Workloads) => workloads(dump),
        (Output::Table, View::Services) => services(dump),
        (Output::Table, View::Policies) => policies(dump),
        (Output::Table, View::Certificates) => certificates(dump),
        (Output::Table, View::All) => [
            workloads(dump),
            services(dump),
            policies(dump),
            certificates(dump),
        ]
        .join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump() -> Value {
        json!({
            "workloads": [{
                "name": "cart-0", "namespace": "shop", "workloadIps": ["10.0.0.2", "fd00::2"],
                "node": "node1", "protocol": "HBONE",
            }],
            "services": [{
                "name": "cart", "namespace": "shop", "vips": ["/10.96.0.1"],
                "endpoints": {"u1": {"status": "Healthy"}, "u2": {"status": "Unhealthy"}},
            }],
            "policies": [{"name": "deny-x", "namespace": "shop", "action": "Deny", "scope": "Namespace"}],
            "certificates": [
                {"identity": "spiffe://cluster.local/ns/shop/sa/cart", "state": "Available",
                 "certChain": [{"serialNumber": "12", "expirationTime": "2026-12-04T00:00:00Z",
                                "validFrom": "2026-12-03T00:00:00Z"}],
                 "rootCerts": [{"serialNumber": "1", "expirationTime": "2036-01-01T00:00:00Z",
                                "validFrom": "2026-01-01T00:00:00Z"}]},
                {"identity": "spiffe://cluster.local/ns/shop/sa/new", "state": "Initializing",
                 "certChain": [], "rootCerts": []},
            ],
        })
    }

    #[test]
    fn tables_have_istioctls_columns() {
        let d = dump();
        assert_eq!(
            render(&d, View::Workloads, Output::Table),
            "NAMESPACE   POD NAME   ADDRESS            NODE    WAYPOINT   PROTOCOL\n\
             shop        cart-0     10.0.0.2,fd00::2   node1   None       HBONE\n"
        );
        assert_eq!(
            render(&d, View::Services, Output::Table),
            "NAMESPACE   SERVICE NAME   SERVICE VIP   WAYPOINT   ENDPOINTS\n\
             shop        cart           10.96.0.1     None       1/2\n"
        );
        assert_eq!(
            render(&d, View::Policies, Output::Table),
            "NAMESPACE   POLICY NAME   ACTION   SCOPE\nshop        deny-x        Deny     Namespace\n"
        );
        let certs = render(&d, View::Certificates, Output::Table);
        let lines: Vec<&str> = certs.lines().collect();
        assert_eq!(lines.len(), 4, "{certs}");
        assert!(
            lines[1].contains("Leaf") && lines[1].contains("true") && lines[1].contains(" 12 "),
            "{certs}"
        );
        assert!(
            lines[2].contains("Root") && lines[2].contains("2036-01-01T00:00:00Z"),
            "{certs}"
        );
        assert!(
            lines[3].contains("Initializing") && lines[3].contains("false"),
            "{certs}"
        );
    }

    #[test]
    fn json_is_the_dumps_own_part() {
        let d = dump();
        let out: Value = serde_json::from_str(&render(&d, View::Policies, Output::Json)).unwrap();
        assert_eq!(out, d["policies"]);
        assert!(render(&json!({}), View::All, Output::Table).contains("POLICY NAME"));
    }
}
