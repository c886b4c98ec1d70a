//! The test mesh (`amesh_testbed::mesh`) with test-friendly forms: construction starts every
//! node, and failures panic with the reason.

pub use amesh_testbed::mesh::{APP_PORT, Mesh, PodSpec, VIP, ZtunnelProcess, outside, pod, uid};
use amesh_testbed::{
    PodProcess,
    probe::{ConnectResult, Connected},
};
use std::{net::SocketAddr, time::Duration};

pub trait MeshExt: Sized {
    /// A started mesh of `specs`.
    fn new(specs: &[PodSpec]) -> Self {
        Self::with_args(specs, &[])
    }
    /// A started mesh whose ztunnels get extra arguments, per node (`(node, args)`).
    fn with_args(specs: &[PodSpec], extra: &[(&str, &[&str])]) -> Self;
    fn apps(&self, names: &[&str]) -> Vec<PodProcess>;
    fn connect(&self, from: &str, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult>;
    fn connect_one(&self, from: &str, target: SocketAddr) -> Connected;
    fn update_config(&self, policies: &[&str], edit: impl FnOnce(String) -> String);
}

impl MeshExt for Mesh {
    fn with_args(specs: &[PodSpec], extra: &[(&str, &[&str])]) -> Self {
        amesh_testbed::require_root();
        let mut mesh = Mesh::try_build(specs).expect("build the mesh");
        mesh.try_start(extra).expect("start the nodes");
        mesh
    }

    fn apps(&self, names: &[&str]) -> Vec<PodProcess> {
        self.try_apps(names).expect("apps")
    }

    fn connect(&self, from: &str, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult> {
        self.try_connect(from, extra, targets).expect("client ran")
    }

    fn connect_one(&self, from: &str, target: SocketAddr) -> Connected {
        self.try_connect_one(from, target)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn update_config(&self, policies: &[&str], edit: impl FnOnce(String) -> String) {
        self.try_update_config(policies, edit)
            .expect("configuration reloaded");
    }
}

pub trait ZtunnelExt {
    fn endpoint(&self, role: &str) -> SocketAddr;
    fn http(&self, role: &str, method: &str, path: &str) -> (u16, String);
}

impl ZtunnelExt for ZtunnelProcess {
    fn endpoint(&self, role: &str) -> SocketAddr {
        self.try_endpoint(role).expect("endpoint")
    }

    fn http(&self, role: &str, method: &str, path: &str) -> (u16, String) {
        self.try_http(role, method, path).expect("http")
    }
}

pub fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    amesh_testbed::mesh::http_raw(addr, request).expect("http")
}

/// Whether `from`'s connection to `to` fails (within 3 s).
pub fn refused(mesh: &Mesh, from: &str, to: SocketAddr) -> bool {
    mesh.connect(from, &["--timeout-ms", "3000"], &[to])
        .remove(0)
        .outcome
        .is_err()
}

/// `from`'s connection to `to` is refused, and the ztunnel of `node` (the destination's)
/// says why: a new line with `reason` in its log (earlier refusals do not count).
pub fn refused_because(mesh: &Mesh, from: &str, to: SocketAddr, node: &str, reason: &str) {
    let z = &mesh.node(node).ztunnel;
    let before = z.log().matches(reason).count();
    let r = mesh
        .connect(from, &["--timeout-ms", "3000"], &[to])
        .remove(0);
    assert!(r.outcome.is_err(), "{from} → {to} was not refused: {r:?}");
    amesh_testbed::eventually(
        format!("{node} logging why {from} → {to} was refused ({reason})"),
        Duration::from_secs(10),
        || {
            let log = z.log();
            (log.matches(reason).count() > before)
                .then_some(())
                .ok_or(log)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The access-log reason STRICT peer authentication refuses plaintext with, from the local
/// file and from the control plane alike: the DENY policy it is converted into, with the
/// ports exempted by a port-level PERMISSIVE.
pub const STRICT_EXCEPT_9090: &str =
    "denied by istio-system/converted_peer_authentication_strict_except_9090";

/// The sum of the samples of metric `name` whose line contains every one of `must_contain`.
pub fn metric_value(metrics: &str, name: &str, must_contain: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// Runs an async block on a fresh runtime inside pod `name`'s network namespace.
pub fn in_pod<R: Send>(
    mesh: &Mesh,
    name: &str,
    f: impl std::future::Future<Output = R> + Send,
) -> R {
    mesh.pod(name)
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .unwrap()
}

/// A TCP connection made from inside pod `from` (usable from any thread afterwards).
pub fn connect_from(mesh: &Mesh, from: &str, to: SocketAddr) -> std::net::TcpStream {
    mesh.pod(from)
        .run(|| std::net::TcpStream::connect(to))
        .unwrap()
        .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"))
}

/// Polls `check` until it gives a value, failing with `what` (and the last state it
/// describes) after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    amesh_testbed::eventually(what, limit, check).unwrap_or_else(|e| panic!("{e}"))
}

/// ztunnel's JSON log events whose message is `message`, as their `fields`.
pub fn log_events(z: &ZtunnelProcess, message: &str) -> Vec<serde_json::Value> {
    z.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .map(|mut v| v["fields"].take())
        .collect()
}

/// One of `z`'s metrics (`name`, lines containing every one of `must_contain`), or 0.
pub fn metric(z: &ZtunnelProcess, name: &str, must_contain: &[&str]) -> u64 {
    let (status, body) = z.http("Metrics", "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    metric_value(&body, name, must_contain).unwrap_or(0)
}

/// A mutual-TLS client configuration for `outside/<from>` (a certificate of the mesh CA)
/// that expects `server`.
fn client_tls(
    mesh: &Mesh,
    me: &amesh_identity::Identity,
    server: &amesh_identity::Identity,
) -> std::sync::Arc<rustls::ClientConfig> {
    use amesh_identity::{LocalCa, tls};
    let ca = LocalCa::load(&mesh.dir.join("ca")).unwrap();
    let cert = ca.issue(me, Duration::from_secs(600)).unwrap();
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()]).unwrap();
    tls::client_config(&cert, &bundle, vec![server.clone()], tls::provider()).unwrap()
}

/// A proper HBONE client in pod `from` (ztunnel's own pool, a certificate of the mesh CA for
/// `outside/<from>`): a fresh mutual-TLS connection to `hbone`, expecting `server`'s
/// identity, a CONNECT to `authority`, one line sent; the reply line, or why it failed.
pub fn hbone_line(
    mesh: &Mesh,
    from: &str,
    hbone: SocketAddr,
    server: amesh_identity::Identity,
    authority: &str,
) -> Result<String, String> {
    hbone_exchange(mesh, from, hbone, server, authority, http::HeaderMap::new()).map(|(l, _)| l)
}

/// [`hbone_line`] with `headers` on the CONNECT; the reply line and the headers of the 200.
pub fn hbone_exchange(
    mesh: &Mesh,
    from: &str,
    hbone: SocketAddr,
    server: amesh_identity::Identity,
    authority: &str,
    headers: http::HeaderMap,
) -> Result<(String, http::HeaderMap), String> {
    let me = amesh_identity::Identity::new("cluster.local", "outside", from);
    let config = client_tls(mesh, &me, &server);
    let tcp = connect_from(mesh, from, hbone);
    tcp.set_nonblocking(true).unwrap();
    let key = amesh_hbone::PoolKey {
        src_pod: from.to_string(),
        src: me,
        dst: hbone,
        dst_identities: vec![server],
    };
    let dial = move || async move {
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        let name = amesh_identity::tls::server_name(hbone.ip());
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let pool = amesh_hbone::Pool::new(amesh_hbone::PoolConfig::default());
        let stream = pool
            .connect(&key, authority, headers, dial)
            .await
            .map_err(|e| format!("CONNECT {authority}: {e}"))?;
        let answer = stream.response_headers().clone();
        Ok((exchange_line(stream).await?, answer))
    })
}

/// Sends a line, reads the reply line, then closes the stream before the connection goes,
/// so the server sees it end cleanly ("ok").
async fn exchange_line(stream: amesh_hbone::PooledStream) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .write_all(b"hello\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut reply));
    let reply = match read.await {
        Ok(Ok(n)) if n > 0 => reply.trim_end().to_string(),
        other => return Err(format!("no reply: {other:?}")),
    };
    let _ = stream.shutdown().await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    Ok(reply)
}
