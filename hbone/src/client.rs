//! The HBONE client: CONNECT streams multiplexed over pooled mutual-TLS connections, one pool
//! entry per (source identity, destination identities, destination address), at most
//! [`PoolConfig::max_streams`] streams per connection. Idle connections are released; live
//! ones are kept alive with HTTP/2 PINGs.

use crate::{H2Stream, HboneError, keepalive::DeadPeer, settings};
use amesh_identity::Identity;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// What connections are pooled by: the same source identity may share a connection only with
/// the same destination address and expected identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The pod the connections belong to: they are opened from its network namespace and
    /// carry its address, so two pods never share one, even with the same identity.
    pub src_pod: String,
    pub src: Identity,
    pub dst: SocketAddr,
    pub dst_identities: Vec<Identity>,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_streams: usize,
    /// A connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Bound on dialing plus the CONNECT round trip.
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams: settings::MAX_STREAMS as usize,
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Conn {
    send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
}

/// The HBONE connection pool.
#[derive(Debug, Clone)]
pub struct Pool {
    config: PoolConfig,
    conns: Arc<Mutex<HashMap<PoolKey, Vec<Conn>>>>,
    /// One dial at a time per key, so that concurrent openers share the new connection
    /// instead of each making their own.
    dialing: Arc<Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>>,
    handshakes: Arc<AtomicU64>,
}

/// A CONNECT stream borrowed from the pool; its slot is released when dropped.
#[derive(Debug)]
pub struct PooledStream {
    inner: H2Stream,
    /// The headers of the peer's 200 (Istio's server describes itself in `baggage`).
    response_headers: http::HeaderMap,
    active: Arc<AtomicUsize>,
}

impl PooledStream {
    /// The headers the peer answered the CONNECT with.
    pub fn response_headers(&self) -> &http::HeaderMap {
        &self.response_headers
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            conns: Arc::default(),
            dialing: Arc::default(),
            handshakes: Arc::default(),
        }
    }

    /// TLS connections opened so far (each is one handshake).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Connections currently pooled.
    pub fn connections(&self) -> usize {
        self.lock()
            .values()
            .map(|v| v.iter().filter(|c| c.alive.load(Ordering::Relaxed)).count())
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a CONNECT stream to `authority` with `headers`, reusing a pooled connection for
    /// `key` when one has room, else calling `dial` for a new mutual-TLS connection.
    pub async fn connect<IO, D, F>(
        &self,
        key: &PoolKey,
        authority: &str,
        headers: http::HeaderMap,
        dial: D,
    ) -> Result<PooledStream, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        D: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
    {
        let timeout = self.config.connect_timeout;
        tokio::time::timeout(timeout, self.connect_inner(key, authority, headers, dial))
            .await
            .map_err(|_| HboneError::Timeout(timeout))?
    }

    async fn connect_inner<IO, D, F>(
        &self,
        key: &PoolKey,
        authority: &str,
        headers: http::HeaderMap,
        dial: D,
    ) -> Result<PooledStream, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        D: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
    {
        // A pooled connection may have been told to go away (the peer drains) since it was
        // last used: if the request fails on it, it is retired and a fresh one dialed.
        if let Some(pooled) = self.checkout(key) {
            match request(pooled.send.clone(), authority, headers.clone()).await {
                Ok((inner, response_headers)) => {
                    return Ok(PooledStream {
                        inner,
                        response_headers,
                        active: pooled.active,
                    });
                }
                Err(HboneError::H2(e)) => {
                    debug!(error = %e, dst = %key.dst, "pooled HBONE connection is gone; dialing a new one");
                    pooled.alive.store(false, Ordering::Release);
                    pooled.active.fetch_sub(1, Ordering::AcqRel);
                }
                Err(e) => {
                    pooled.active.fetch_sub(1, Ordering::AcqRel);
                    return Err(e);
                }
            }
        }
        let pooled = {
            let gate = self.lock_gates().entry(key.clone()).or_default().clone();
            let _turn = gate.lock().await;
            // Whoever dialed while we waited may have made room for us.
            match self.checkout(key) {
                Some(found) => found,
                None => self.dial(key, dial).await?,
            }
        };
        self.lock_gates().remove(key);
        match request(pooled.send, authority, headers).await {
            Ok((inner, response_headers)) => Ok(PooledStream {
                inner,
                response_headers,
                active: pooled.active,
            }),
            Err(e) => {
                pooled.active.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn lock_gates(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>> {
        self.dialing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live pooled connection with room for one more stream, its slot taken.
    fn checkout(&self, key: &PoolKey) -> Option<Checkout> {
        let mut conns = self.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| c.alive.load(Ordering::Acquire));
        if list.is_empty() {
            conns.remove(key);
            return None;
        }
        let max = self.config.max_streams;
        let conn = list.iter().find(|c| {
            c.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        })?;
        Some(Checkout {
            send: conn.send.clone(),
            active: conn.active.clone(),
            alive: conn.alive.clone(),
        })
    }

    async fn dial<IO, D, F>(&self, key: &PoolKey, dial: D) -> Result<Checkout, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        D: FnOnce() -> F,
        F: Future<Output = io::Result<IO>>,
    {
        let io = dial().await.map_err(HboneError::Connect)?;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let (send, conn) = settings::client_builder().handshake::<_, Bytes>(io).await?;
        let active = Arc::new(AtomicUsize::new(1));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(drive(
            conn,
            active.clone(),
            alive.clone(),
            self.config.clone(),
        ));
        let entry = Conn {
            send: send.clone(),
            active: active.clone(),
            alive: alive.clone(),
        };
        self.lock().entry(key.clone()).or_default().push(entry);
        debug!(dst = %key.dst, src = %key.src, pod = %key.src_pod, "new HBONE connection");
        Ok(Checkout {
            send,
            active,
            alive,
        })
    }

    /// Forgets every connection of pod `src_pod` (it is gone): they close once their last
    /// stream ends.
    pub fn evict(&self, src_pod: &str) {
        self.lock().retain(|k, list| {
            if k.src_pod != src_pod {
                return true;
            }
            list.iter()
                .for_each(|c| c.alive.store(false, Ordering::Release));
            false
        });
    }
}

/// A pooled connection handed to one request.
struct Checkout {
    send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
}

async fn request(
    send: SendRequest<Bytes>,
    authority: &str,
    headers: http::HeaderMap,
) -> Result<(H2Stream, http::HeaderMap), HboneError> {
    let mut send = send.ready().await?;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())?;
    *req.headers_mut() = headers;
    let (response, stream) = send.send_request(req, false)?;
    let response = response.await?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Status(response.status()));
    }
    let (parts, body) = response.into_parts();
    Ok((H2Stream::new(stream, body), parts.headers))
}

/// Drives one pooled connection: its frames, keepalive PINGs, and closing when idle.
async fn drive<IO>(
    mut conn: h2::client::Connection<IO, Bytes>,
    active: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    config: PoolConfig,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let dead_peer = DeadPeer::watch(conn.ping_pong(), config.ping_interval, config.ping_timeout);
    tokio::pin!(dead_peer);
    let mut tick = tokio::time::interval((config.idle_timeout / 4).max(Duration::from_millis(10)));
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(error) = result {
                    debug!(%error, "HBONE connection ended");
                }
                break;
            }
            () = &mut dead_peer => {
                debug!("HBONE peer did not answer a PING in time; closing");
                break;
            }
            _ = tick.tick() => {
                if active.load(Ordering::Acquire) > 0 || !alive.load(Ordering::Acquire) {
                    idle_since = None;
                    continue;
                }
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= config.idle_timeout {
                    debug!("closing idle HBONE connection");
                    break;
                }
            }
        }
    }
    alive.store(false, Ordering::Release);
}

impl AsyncRead for PooledStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}
