//! HBONE over real mutual TLS on loopback: a server answering CONNECT with an echo tunnel and
//! the pooled client.
#![allow(clippy::unwrap_used, reason = "test code")]

use amesh_hbone::{HboneError, Pool, PoolConfig, PoolKey, server};
use amesh_identity::{Identity, LocalCa, WorkloadCert, tls};
use http::StatusCode;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Setup {
    addr: SocketAddr,
    client_cert: WorkloadCert,
    server_id: Identity,
    bundle: tls::TrustBundle,
}

/// A server that echoes every accepted tunnel, refuses authority port 401/503 with that
/// status, and hangs up on anything else it is told to.
async fn start_server() -> Setup {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()]).unwrap();
    let server_id = Identity::new("cluster.local", "ns", "server");
    let server_cert = ca.issue(&server_id, Duration::from_secs(3600)).unwrap();
    let client_cert = ca
        .issue(
            &Identity::new("cluster.local", "ns", "client"),
            Duration::from_secs(3600),
        )
        .unwrap();
    let acceptor =
        TlsAcceptor::from(tls::server_config(&server_cert, &bundle, tls::provider()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer =
                    amesh_identity::identity_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
                        .unwrap();
                let _ = server::serve(tls, peer, handle, std::future::pending()).await;
            });
        }
    });
    Setup {
        addr,
        client_cert,
        server_id,
        bundle,
    }
}

/// Bytes the flooding handler (port 7777) got written into its stream so far.
static FLOODED: AtomicU64 = AtomicU64::new(0);

async fn handle(req: server::IncomingConnect) {
    let port = match &req.target {
        server::Target::Addr(a) => a.port(),
        server::Target::Host(_, p) => *p,
    };
    match port {
        // Floods the client, to show a stream that is not read stalls only itself.
        7777 => {
            let mut s = req.accept().unwrap();
            let chunk = vec![7u8; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {
                FLOODED.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        401 => req.refuse(StatusCode::UNAUTHORIZED),
        503 => req.refuse(StatusCode::SERVICE_UNAVAILABLE),
        _ => {
            // Echo, and report the caller's identity first.
            let peer = req.peer_identity.to_string();
            let mut s = req.accept().unwrap();
            s.write_all(format!("{peer}\n").as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
            s.shutdown().await.unwrap();
        }
    }
}

impl Setup {
    fn key(&self) -> PoolKey {
        PoolKey {
            src_pod: "client-pod".into(),
            src: self.client_cert.identity.clone(),
            dst: self.addr,
            dst_identities: vec![self.server_id.clone()],
        }
    }

    async fn open(
        &self,
        pool: &Pool,
        authority: &str,
        expect: Identity,
    ) -> Result<amesh_hbone::PooledStream, HboneError> {
        let config = tls::client_config(
            &self.client_cert,
            &self.bundle,
            vec![expect],
            tls::provider(),
        )
        .unwrap();
        let addr = self.addr;
        pool.connect(
            &self.key(),
            authority,
            http::HeaderMap::new(),
            move || async move {
                let tcp = TcpStream::connect(addr).await?;
                TlsConnector::from(config)
                    .connect(tls::server_name(addr.ip()), tcp)
                    .await
            },
        )
        .await
    }
}

/// Sends `payload` (then half-closes) while reading everything back, as a real client would:
/// writing first and reading later would deadlock against any echo once windows fill.
async fn echo(stream: &mut amesh_hbone::PooledStream, payload: &[u8]) -> (String, Vec<u8>) {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut out = Vec::new();
    let read = r.read_to_end(&mut out);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    let nl = out.iter().position(|&b| b == b'\n').unwrap();
    let rest = out.split_off(nl + 1);
    (String::from_utf8(out).unwrap().trim().to_string(), rest)
}

#[tokio::test]
async fn bytes_cross_both_ways_with_half_close_and_the_server_sees_the_client_identity() {
    let s = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    for size in [1usize, 32 * 1024 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut stream = s
            .open(&pool, "10.0.0.1:8080", s.server_id.clone())
            .await
            .unwrap();
        let (peer, back) = echo(&mut stream, &payload).await;
        assert_eq!(peer, "spiffe://cluster.local/ns/ns/sa/client");
        assert_eq!(back.len(), payload.len());
        assert!(back == payload, "payload of {size} bytes came back intact");
    }
}

#[tokio::test]
async fn sequential_streams_share_one_handshake_and_concurrent_ones_fill_connections() {
    let s = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    for _ in 0..100 {
        let mut stream = s
            .open(&pool, "10.0.0.1:8080", s.server_id.clone())
            .await
            .unwrap();
        echo(&mut stream, b"x").await;
    }
    assert_eq!(pool.handshakes(), 1);

    let pool = Pool::new(PoolConfig::default());
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let (s, pool) = (s.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = s
                .open(&pool, "10.0.0.1:8080", s.server_id.clone())
                .await
                .unwrap();
            // Hold every stream open until all 150 exist.
            stream.write_all(b"y").await.unwrap();
            let mut b = [0u8; 1];
            while b[0] != b'\n' {
                stream.read_exact(&mut b).await.unwrap();
            }
            stream
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    assert_eq!(pool.handshakes(), 2, "150 streams at 100 per connection");
    drop(streams);
}

#[tokio::test]
async fn refusals_and_wrong_identities_surface_as_errors() {
    let s = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let err = s
        .open(&pool, "10.0.0.1:401", s.server_id.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HboneError::Status(StatusCode::UNAUTHORIZED)),
        "{err}"
    );
    let err = s
        .open(&pool, "10.0.0.1:503", s.server_id.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HboneError::Status(StatusCode::SERVICE_UNAVAILABLE)),
        "{err}"
    );
    // The connection survives refusals: still one handshake.
    assert_eq!(pool.handshakes(), 1);

    let other = Pool::new(PoolConfig::default());
    let err = s
        .open(
            &other,
            "10.0.0.1:8080",
            Identity::new("cluster.local", "ns", "impostor"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, HboneError::Connect(_)),
        "a server with another identity is refused: {err}"
    );
}

#[tokio::test]
async fn requests_that_are_not_connect_get_400() {
    let s = start_server().await;
    let config = tls::client_config(
        &s.client_cert,
        &s.bundle,
        vec![s.server_id.clone()],
        tls::provider(),
    )
    .unwrap();
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let tls_stream = TlsConnector::from(config)
        .connect(tls::server_name(s.addr.ip()), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls_stream).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    for req in [
        http::Request::get("https://10.0.0.1:8080/")
            .body(())
            .unwrap(),
        http::Request::builder()
            .method("CONNECT")
            .uri("not-an-authority")
            .body(())
            .unwrap(),
    ] {
        let (resp, _) = send.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_stream_nobody_reads_does_not_stall_the_others() {
    let s = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    // The server floods this stream; we never read it, so its window fills up.
    let _flooded = s
        .open(&pool, "10.0.0.1:7777", s.server_id.clone())
        .await
        .unwrap();
    // Wait until the flood has filled the stream's flow-control window (4 MiB): from then on
    // the unread stream holds back everything the server writes into it.
    let filled = tokio::time::timeout(Duration::from_secs(20), async {
        while FLOODED.load(Ordering::Relaxed) < 4 * 1024 * 1024 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    filled.await.expect("the flood fills the stream's window");
    // Another stream on the same connection still carries 8 MiB both ways promptly.
    let mut other = s
        .open(&pool, "10.0.0.1:8080", s.server_id.clone())
        .await
        .unwrap();
    assert_eq!(pool.handshakes(), 1, "both streams share one connection");
    let payload = vec![1u8; 8 * 1024 * 1024];
    let (_, back) = tokio::time::timeout(Duration::from_secs(20), echo(&mut other, &payload))
        .await
        .expect("not stalled");
    assert_eq!(back.len(), payload.len());
}

#[tokio::test]
async fn idle_connections_are_released() {
    let s = start_server().await;
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config);
    let mut stream = s
        .open(&pool, "10.0.0.1:8080", s.server_id.clone())
        .await
        .unwrap();
    echo(&mut stream, b"x").await;
    assert_eq!(pool.connections(), 1, "kept while in use");
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle connection was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = s
        .open(&pool, "10.0.0.1:8080", s.server_id.clone())
        .await
        .unwrap();
    echo(&mut again, b"y").await;
    assert_eq!(pool.handshakes(), 2, "a released connection is not reused");
}
