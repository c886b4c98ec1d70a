//! The plugin's own look at the Kubernetes API, for when the node agent cannot be asked (as
//! Istio's plugin does): the pod and its namespace, decided by the agent's own rules. One
//! plain HTTP/1.1 GET per object, over TLS to a real API server (its CA and a token the agent
//! keeps fresh next to its socket), or in the clear to a local proxy or a test emulator.

use amesh_kube::enrollment::{Decision, decide};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::{Deserialize, Serialize};
use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

/// How to reach the API server from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeAccess {
    /// `https://host:port` (or `http://` for a local proxy).
    pub server: String,
    /// A bearer token, read at each call (the agent rotates it).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM roots that sign the API server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Whether the pod must be in the mesh, from the API; `Err` when the API cannot say.
pub fn must_enroll(
    access: &KubeAccess,
    namespace: &str,
    name: &str,
    excluded: &[String],
    timeout: Duration,
) -> Result<bool, String> {
    let ns: Namespace = serde_json::from_value(get(
        access,
        &format!("/api/v1/namespaces/{namespace}"),
        timeout,
    )?)
    .map_err(|e| format!("namespace {namespace}: {e}"))?;
    let pod: Pod = serde_json::from_value(get(
        access,
        &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
        timeout,
    )?)
    .map_err(|e| format!("pod {namespace}/{name}: {e}"))?;
    Ok(decide(&pod, Some(&ns), excluded) == Decision::Enroll)
}

/// `GET path` → the JSON body of a 200.
pub fn get(
    access: &KubeAccess,
    path: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let (tls, rest) = match access.server.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => {
            return Err(format!(
                "server {:?}: expected http(s)://host:port",
                access.server
            ));
        }
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = split_authority(authority, if tls { 443 } else { 80 })?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let token = match &access.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
            .map_err(|e| format!("{}: {e}", f.display()))?,
        None => String::new(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n{token}Connection: close\r\n\r\n"
    );
    let raw = if tls {
        let config = tls_config(access)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        exchange(rustls::StreamOwned::new(conn, tcp), &request)?
    } else {
        exchange(tcp, &request)?
    };
    let (status, body) = parse_response(&raw)?;
    if status != 200 {
        return Err(format!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: {e}"))
}

fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None), // bare IPv6
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{authority}: bad port"))?,
        None => default_port,
    };
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

fn tls_config(access: &KubeAccess) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let ca = access
        .ca_file
        .as_ref()
        .ok_or("https needs ca_file (the API server's CA)")?;
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(der)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends the request and reads the whole response: up to its Content-Length, the last chunk,
/// or the server closing (a server may keep the connection open despite `Connection: close`).
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<Vec<u8>, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if response_complete(&raw) {
            return Ok(raw);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Some servers close TLS without close_notify; what arrived is what there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {
                return Ok(raw);
            }
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

/// Whether `raw` holds a whole response (headers and the body they announce).
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    length.is_some_and(|n| body.len() >= n)
}

/// Status and body of an HTTP/1.1 response (plain or chunked body).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Ok((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((404, b"abcde".to_vec())));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn complete_responses() {
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}"
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("10.0.0.1:6443", 443),
            Ok(("10.0.0.1".into(), 6443))
        );
        assert_eq!(
            split_authority("kubernetes.default.svc", 443),
            Ok(("kubernetes.default.svc".into(), 443))
        );
        assert_eq!(
            split_authority("[fd00::1]:6443", 443),
            Ok(("fd00::1".into(), 6443))
        );
        assert!(split_authority("host:x", 443).is_err());
    }
}
