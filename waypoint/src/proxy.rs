//! The HBONE listener (15008): mutual TLS with the waypoint's own certificate, a client
//! certificate required; each CONNECT is checked against the bindings, then served as HTTP
//! (detected from its first bytes) or relayed as opaque TCP.

use crate::{
    Me, bound,
    metrics::{Metrics, RefuseReason, TcpLabels},
    upstream,
};
use amesh_hbone::server::{IncomingConnect, Target};
use amesh_identity::{CertManager, Identity, identity_of, tls};
use amesh_ratelimit::{Throttle, WARN_EVERY};
use amesh_state::{AppProtocol, StateReader};
use bytes::Bytes;
use http::StatusCode;
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicUsize},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

/// What every connection needs.
#[derive(Debug)]
pub struct Inputs {
    pub me: Me,
    pub state: StateReader,
    pub certs: Arc<CertManager>,
    pub bundle: tls::TrustBundle,
    pub pool: amesh_hbone::Pool,
    pub metrics: Arc<Metrics>,
    /// Spreads connections over a service's endpoints.
    pub next_pick: AtomicUsize,
    pub net: crate::net::Net,
    /// The HTTP route table, replaced whole on every xDS update.
    pub routes: watch::Receiver<Arc<crate::routes::Table>>,
    /// The policies in force, replaced whole on every xDS update.
    pub policies: watch::Receiver<Arc<crate::authz::Table>>,
    /// Idle upstream HTTP/1.1 connections.
    pub h1_pool: Arc<crate::http::H1Pool>,
    /// Open upstream HTTP/2 connections.
    pub h2_pool: crate::http::H2Pool,
    /// Requests in flight per destination Service (DestinationRule connection pools).
    pub breakers: crate::breaker::Breakers,
    /// Endpoint health per destination Service (DestinationRule outlier detection).
    pub outliers: crate::outlier::Outliers,
}

/// Bound on the TLS handshake of a new connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a CONNECT's first bytes are awaited to tell HTTP from opaque TCP; a client that
/// waits for the server to speak first (MySQL, SMTP) is relayed as TCP after this.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

static NOT_BOUND_WARNING: Throttle = Throttle::new(WARN_EVERY);

/// Serves until `stop` turns true; connections then get GOAWAY and finish their streams.
/// Every connection holds a clone of `open`: once all are gone, the receiver's `recv` ends.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    stop: watch::Receiver<bool>,
    open: tokio::sync::mpsc::Sender<()>,
) {
    let mut acceptor = amesh_serve::Acceptor::new("waypoint HBONE");
    let mut stopping = stop.clone();
    loop {
        let (conn, peer) = tokio::select! {
            accepted = acceptor.accept(&listener) => accepted,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let inputs = inputs.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(
            async move {
                connection(inputs, conn, peer, stop).await;
                drop(open);
            }
            .instrument(info_span!("waypoint", %peer)),
        );
    }
}

async fn connection(
    inputs: Arc<Inputs>,
    conn: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = conn.set_nodelay(true);
    // Fail closed: no certificate, no TLS, no traffic.
    let Some(cert) = inputs.certs.get(&inputs.me.identity) else {
        inputs.metrics.refuse(RefuseReason::NotReady);
        debug!("refused: the waypoint's certificate is not ready");
        return;
    };
    let config = match tls::server_config(&cert, &inputs.bundle, tls::provider()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "refused: no TLS configuration");
            return;
        }
    };
    let handshake = TlsAcceptor::from(config).accept(conn);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            inputs.metrics.refuse(RefuseReason::Handshake);
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            inputs.metrics.refuse(RefuseReason::Handshake);
            debug!("TLS handshake timed out");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c).ok());
    let Some(identity) = identity else {
        inputs.metrics.refuse(RefuseReason::Handshake);
        return;
    };
    let handler = {
        let inputs = inputs.clone();
        move |connect: IncomingConnect| {
            let inputs = inputs.clone();
            async move { handle_connect(inputs, connect, peer).await }
        }
    };
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = amesh_hbone::server::serve(tls, identity, handler, shutdown).await {
        debug!(error = %e, "HBONE connection ended");
    }
}

/// Who sent a CONNECT: its certificate's identity, its address, and what its `baggage` says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub addr: SocketAddr,
    pub baggage: amesh_hbone::metadata::Baggage,
    pub headers: http::HeaderMap,
}

async fn handle_connect(inputs: Arc<Inputs>, connect: IncomingConnect, peer: SocketAddr) {
    let Target::Addr(target) = connect.target.clone() else {
        inputs.metrics.refuse(RefuseReason::BadRequest);
        return connect.refuse(StatusCode::BAD_REQUEST);
    };
    if !crate::ready(&inputs.state, &inputs.certs, &inputs.me) {
        inputs.metrics.refuse(RefuseReason::NotReady);
        return connect.refuse(StatusCode::SERVICE_UNAVAILABLE);
    }
    let destination = {
        let state = inputs.state.snapshot();
        bound::destination(&state, &inputs.me, target)
    };
    let destination = match destination {
        Ok(d) => d,
        Err(e) => {
            inputs.metrics.refuse(RefuseReason::NotBound);
            if let Some(suppressed) = NOT_BOUND_WARNING.allow() {
                warn!(%target, caller = %connect.peer_identity, reason = %e, suppressed, "CONNECT refused (400)");
            }
            return connect.refuse(StatusCode::BAD_REQUEST);
        }
    };
    let caller = Caller {
        identity: connect.peer_identity.clone(),
        addr: peer,
        baggage: amesh_hbone::metadata::Baggage::parse(&connect.headers),
        headers: connect.headers.clone(),
    };
    let span = info_span!("connect", %target, src.identity = %caller.identity);
    async move {
        let stream = match connect.accept() {
            Ok(s) => s,
            Err(e) => return debug!(error = %e, "answering CONNECT"),
        };
        let declared = match &destination {
            bound::Destination::Service(s) => s.app_protocol(target.port()),
            bound::Destination::Workload(_) => AppProtocol::Unknown,
        };
        let mut stream = Sniffed::new(stream);
        // A connection that will be relayed as TCP is judged by the L4 part of the policies
        // (an ALLOW rule that needs HTTP allows nothing), before anything is relayed.
        let tcp_denied = || {
            let table = inputs.policies.borrow().clone();
            let outcome =
                crate::authz::decide(&inputs, &table, &caller, &destination, target, None);
            match outcome.decision {
                amesh_policy::Decision::Deny { by } => {
                    info!(policy = %by, src.identity = %caller.identity, "TCP connection denied by policy");
                    let labels = tcp_labels(&caller, &destination, None, "-");
                    inputs.metrics.tcp_opened.get_or_create(&labels).inc();
                    inputs.metrics.tcp_closed.get_or_create(&labels).inc();
                    true
                }
                amesh_policy::Decision::Allow { .. } => false,
            }
        };
        // A port with a TCPRoute goes to the route's backends, as TCP.
        if let bound::Destination::Service(s) = &destination {
            let table = inputs.routes.borrow().clone();
            if let Some(rule) = table.tcp_route(&s.key(), target.port()) {
                let to = match crate::http::pick_backend(&rule.backends) {
                    None => Err(("no backend for this route", "NC")),
                    Some(b) if b.unresolved.is_some() => {
                        Err(("the route's backend could not be resolved", "NC"))
                    }
                    Some(b) => crate::http::backend_address(&inputs, b, target)
                        .map(|to| (to, b.endpoints.clone()))
                        .ok_or(("no healthy upstream", "UH")),
                };
                if tcp_denied() {
                    return;
                }
                return match to {
                    Ok((to, subset)) => {
                        let only = (!subset.is_empty()).then_some(subset.as_slice());
                        relay_tcp(&inputs, &caller, &destination, to, stream, only).await
                    }
                    Err((why, flag)) => {
                        let labels = tcp_labels(&caller, &destination, None, flag);
                        inputs.metrics.tcp_opened.get_or_create(&labels).inc();
                        inputs.metrics.tcp_closed.get_or_create(&labels).inc();
                        warn!(route = %rule.route, reason = why, "TCP connection closed");
                    }
                };
            }
        }
        // A port declared TCP or TLS is relayed at once: a server-first protocol would
        // otherwise wait out the detection.
        if matches!(declared, AppProtocol::Tcp | AppProtocol::Tls) {
            if tcp_denied() {
                return;
            }
            return relay_tcp(&inputs, &caller, &destination, target, stream, None).await;
        }
        match stream.sniff().await {
            Sniff::Http1 => {
                crate::http::serve(inputs, caller, destination, target, stream, false).await;
            }
            Sniff::Http2 => {
                crate::http::serve(inputs, caller, destination, target, stream, true).await;
            }
            // A port declared HTTP gets HTTP's answer to what is not HTTP (400).
            Sniff::Other if declared != AppProtocol::Unknown => {
                crate::http::serve(inputs, caller, destination, target, stream, false).await;
            }
            Sniff::Other if tcp_denied() => {}
            Sniff::Other => {
                relay_tcp(&inputs, &caller, &destination, target, stream, None).await
            }
        }
    }
    .instrument(span)
    .await
}

fn tcp_labels(
    caller: &Caller,
    destination: &bound::Destination,
    endpoint: Option<&upstream::Endpoint>,
    flag: &'static str,
) -> TcpLabels {
    let addressed = match destination {
        bound::Destination::Service(s) => Some(s.as_ref()),
        bound::Destination::Workload(_) => None,
    };
    TcpLabels {
        peers: crate::http::peer_labels(caller, addressed, endpoint),
        request_protocol: "tcp",
        response_flags: flag,
        connection_security_policy: "mutual_tls",
    }
}

/// Opaque TCP: L4 only, relayed as is to an endpoint of `target`; counted in Istio's TCP
/// metrics.
async fn relay_tcp(
    inputs: &Inputs,
    caller: &Caller,
    destination: &bound::Destination,
    target: SocketAddr,
    mut stream: Sniffed,
    only: Option<&[String]>,
) {
    let headers = forwarded(caller);
    let m = &inputs.metrics;
    let (mut upstream, endpoint) = match upstream::connect(inputs, target, headers, only).await {
        Ok(u) => u,
        Err(e) => {
            let labels = tcp_labels(caller, destination, None, e.response_flag());
            m.tcp_opened.get_or_create(&labels).inc();
            m.tcp_closed.get_or_create(&labels).inc();
            return warn!(error = %e, "TCP upstream failed");
        }
    };
    let labels = tcp_labels(caller, destination, Some(&endpoint), "-");
    m.tcp_opened.get_or_create(&labels).inc();
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((received, sent)) => {
            m.tcp_received.get_or_create(&labels).inc_by(received);
            m.tcp_sent.get_or_create(&labels).inc_by(sent);
            debug!(endpoint = %endpoint.addr, received, sent, "TCP relayed");
        }
        Err(e) => debug!(endpoint = %endpoint.addr, error = %e, "TCP relay ended"),
    }
    m.tcp_closed.get_or_create(&labels).inc();
}

/// The `forwarded` header sent on the far hop: the original client.
pub fn forwarded(caller: &Caller) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(v) = caller.headers.get("forwarded") {
        headers.insert("forwarded", v.clone());
    }
    headers.insert(
        amesh_hbone::metadata::TRACEPARENT,
        amesh_hbone::metadata::new_traceparent(),
    );
    headers
}

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Http1,
    Http2,
    Other,
}

impl Sniff {
    /// HTTP/1.x starts with a method token and a space; HTTP/2 with its preface.
    pub fn of(bytes: &[u8]) -> Self {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        if bytes.starts_with(PREFACE) {
            return Self::Http2;
        }
        let Some(space) = bytes.iter().position(|b| *b == b' ') else {
            return Self::Other;
        };
        let method = &bytes[..space];
        const METHODS: [&[u8]; 9] = [
            b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
        ];
        if METHODS.contains(&method) {
            Self::Http1
        } else {
            Self::Other
        }
    }
}

/// A stream whose first bytes were read to tell its protocol, and are replayed.
pub struct Sniffed {
    inner: amesh_hbone::H2Stream,
    head: Bytes,
}

impl std::fmt::Debug for Sniffed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniffed")
            .field("head", &self.head.len())
            .finish()
    }
}

impl Sniffed {
    fn new(inner: amesh_hbone::H2Stream) -> Self {
        Self {
            inner,
            head: Bytes::new(),
        }
    }

    /// Reads what arrives within [`SNIFF_TIMEOUT`] (up to 16 bytes are enough to decide).
    async fn sniff(&mut self) -> Sniff {
        let mut buf = vec![0u8; 16];
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
        while got < buf.len() {
            match tokio::time::timeout_at(deadline, self.inner.read(&mut buf[got..])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    got += n;
                    // A method and its space are enough.
                    if buf[..got].contains(&b' ') {
                        break;
                    }
                }
            }
        }
        buf.truncate(got);
        self.head = Bytes::from(buf);
        Sniff::of(&self.head)
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(out.remaining());
            let chunk = self.head.split_to(n);
            out.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols_by_its_first_bytes() {
        assert_eq!(Sniff::of(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(Sniff::of(b"POST /x"), Sniff::Http1);
        assert_eq!(Sniff::of(b"PRI * HTTP/2.0\r\n\r\nSM"), Sniff::Http2);
        assert_eq!(Sniff::of(b"GETX / HTTP/1.1"), Sniff::Other);
        assert_eq!(Sniff::of(b"\x16\x03\x01\x02\x00"), Sniff::Other, "TLS");
        assert_eq!(Sniff::of(b""), Sniff::Other, "a server-first protocol");
        assert_eq!(Sniff::of(b"SSH-2.0-OpenSSH"), Sniff::Other);
    }
}
