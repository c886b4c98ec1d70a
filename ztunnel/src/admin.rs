//! ztunnel's HTTP endpoints, as Istio's ztunnel has them:
//! - admin (localhost:15000): `GET /config_dump` (JSON: workloads, services, policies,
//!   certificates with expiry, pods), `GET /logging`, `POST /logging?level=<level>` or
//!   `?level=<target>:<level>,...` or `?reset` (Istio's syntax, see [`crate::logging`]),
//!   `POST /quitquitquit`;
//! - readiness (15021): `GET /healthz/ready`, 200 once the configuration is loaded, the node
//!   agent's snapshot is in and every pod's certificate is ready, 503 before;
//! - metrics (15020): `GET /metrics`, Prometheus/OpenMetrics text.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, bounded request size;
//! anything it cannot parse gets a 400 and only that connection is closed.

use crate::{
    accept::Acceptor,
    inpod::InPod,
    logging::{self, LogControl},
    shared::Shared,
};
use amesh_identity::CertState;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tracing::{info, warn};

const MAX_REQUEST: usize = 8192;

/// What the endpoints look at.
pub struct Endpoints {
    pub shared: Arc<Shared>,
    pub pods: Arc<InPod>,
    pub registry: Registry,
    pub log: LogControl,
    /// Set once the node agent's first snapshot has been applied.
    pub snapshot_received: Arc<AtomicBool>,
    /// Notified by `/quitquitquit`.
    pub quit: Arc<Notify>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Admin,
    Readiness,
    Metrics,
}

impl Role {
    /// The `listener` label of its metrics and log lines.
    fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Readiness => "readiness",
            Self::Metrics => "metrics",
        }
    }
}

/// Serves `role` on `listener` forever; accept errors back off (see [`Acceptor`]).
pub async fn serve(listener: TcpListener, role: Role, endpoints: Arc<Endpoints>) {
    let mut listener = Acceptor::new(listener, role.label(), &endpoints.shared.metrics);
    loop {
        let (conn, _) = listener.accept().await;
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), one(conn, role, &endpoints)).await;
        });
    }
}

async fn one(mut conn: TcpStream, role: Role, e: &Endpoints) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            break 0;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).unwrap_or("");
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let resp = match (words.next(), words.next(), words.next()) {
        (Some(method), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
            route(role, method, target, e)
        }
        _ => Response::text(400, "bad request\n"),
    };
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        resp.content_type,
        resp.body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(resp.body.as_bytes()).await?;
    conn.shutdown().await
}

fn route(role: Role, method: &str, target: &str, e: &Endpoints) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (role, method, path) {
        (Role::Admin, "GET", "/config_dump") => {
            Response::new(200, "application/json", config_dump(e))
        }
        (Role::Admin, "GET", "/logging") => log_level(e),
        (Role::Admin, "POST", "/logging") => set_log_level(e, query),
        (Role::Admin, "POST", "/quitquitquit") => {
            e.quit.notify_one();
            Response::text(200, "draining and exiting\n")
        }
        (Role::Readiness, "GET", "/healthz/ready") => readiness(e),
        (Role::Metrics, "GET", "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &e.registry) {
                Ok(()) => Response::new(
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => Response::text(503, "encoding metrics failed\n"),
            }
        }
        (_, "GET" | "POST", _) => Response::text(404, "not found\n"),
        _ => Response::text(405, "method not allowed\n"),
    }
}

fn readiness(e: &Endpoints) -> Response {
    let mut waiting = Vec::new();
    if !e.shared.state.is_loaded() {
        waiting.push("configuration");
    }
    if !e
        .snapshot_received
        .load(std::sync::atomic::Ordering::Acquire)
    {
        waiting.push("node agent snapshot");
    }
    if !e.pods.certificates_ready() {
        waiting.push("pod certificates");
    }
    if waiting.is_empty() {
        Response::text(200, "ready\n")
    } else {
        Response::text(
            503,
            format!("not ready: waiting for {}\n", waiting.join(", ")),
        )
    }
}

/// `POST /logging`, as Istio's ztunnel answers it (see [`crate::logging`]): without `level`
/// or `reset` it only tells the current level; an invalid level is a 400 listing the valid
/// ones, and the level stays as it was.
fn set_log_level(e: &Endpoints, query: &str) -> Response {
    let (mut level, mut reset) = (None, false);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("level", v) => level = Some(v),
            ("reset", _) => reset = true,
            _ => {}
        }
    }
    if level.is_none() && !reset {
        return log_level(e);
    }
    let Some(spec) = logging::percent_decode(level.unwrap_or("")) else {
        return Response::text(
            400,
            format!("the level is not valid percent-encoding\n{}", logging::HELP),
        );
    };
    match e.log.set(&spec, reset) {
        Ok(filter) => {
            info!(level = %spec, reset, %filter, "log level changed");
            Response::text(200, format!("current log level is {filter}\n"))
        }
        Err(err) if err.is_bad_request() => {
            warn!(level = %spec, %err, "rejected log level");
            Response::text(
                400,
                format!("invalid level {spec:?}: {err}\n{}", logging::HELP),
            )
        }
        Err(err) => Response::text(503, format!("{err}\n")),
    }
}

/// `GET /logging`: the filter in effect.
fn log_level(e: &Endpoints) -> Response {
    Response::text(200, format!("current log level is {}\n", e.log.current()))
}

fn secs(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn config_dump(e: &Endpoints) -> String {
    let state = e.shared.state.snapshot();
    let certificates: Vec<_> = e
        .shared
        .certs
        .dump()
        .into_iter()
        .map(|c| {
            json!({
                "identity": c.identity.to_string(),
                "state": match c.state { CertState::Pending => "Pending", CertState::Ready => "Ready", CertState::Expired => "Expired" },
                "expiry": secs(c.not_after),
                "renewAt": secs(c.renew_at),
                "lastError": c.last_error,
            })
        })
        .collect();
    let dump = json!({
        "node": e.shared.node,
        "workloads": state.workloads().map(|w| w.as_ref()).collect::<Vec<_>>(),
        "services": state.services().map(|s| s.as_ref()).collect::<Vec<_>>(),
        "policies": state.policies().map(|p| p.as_ref()).collect::<Vec<_>>(),
        "peerAuthentications": state.peer_authentications(),
        "pods": e.pods.uids(),
        "certificates": certificates,
    });
    serde_json::to_string_pretty(&dump).unwrap_or_else(|_| "{}".into())
}
