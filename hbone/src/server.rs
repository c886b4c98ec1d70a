//! The HBONE server side: one mutual-TLS connection carrying HTTP/2 CONNECT streams.
//!
//! Requests that are not CONNECT, or whose authority does not parse, are answered 400 here;
//! every other request is handed to the caller as an [`IncomingConnect`], which answers it
//! (401 refused by policy, 503 upstream unreachable, 200 and a byte stream).

use crate::{
    H2Stream, HboneError,
    keepalive::{self, DeadPeer},
    settings,
};
use amesh_identity::Identity;
use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use std::{future::Future, net::SocketAddr};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// Bound on the HTTP/2 preface and settings exchange of a new connection.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a CONNECT asks to go (`:authority`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `ip:port`, the usual form.
    Addr(SocketAddr),
    /// `host:port`, used through gateways.
    Host(String, u16),
}

impl Target {
    /// Parses an `:authority`: `ip:port`, `[ipv6]:port` or `host:port`.
    pub fn parse(authority: &str) -> Option<Self> {
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Some(Self::Addr(addr));
        }
        let (host, port) = authority.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        valid.then(|| Self::Host(host.to_string(), port))
    }
}

/// One CONNECT request, waiting for an answer.
#[derive(Debug)]
pub struct IncomingConnect {
    pub target: Target,
    pub headers: http::HeaderMap,
    /// The client's SPIFFE identity, from its certificate.
    pub peer_identity: Identity,
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl IncomingConnect {
    /// Refuses with `status` (400, 401, 503 ...), ending the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let resp = Response::builder()
            .status(status)
            .body(())
            .unwrap_or_default();
        let _ = self.respond.send_response(resp, true);
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(self) -> Result<H2Stream, HboneError> {
        self.accept_with(http::HeaderMap::new())
    }

    /// Answers 200 with `headers` (Istio's server describes itself in `baggage`) and returns
    /// the tunnel.
    pub fn accept_with(mut self, headers: http::HeaderMap) -> Result<H2Stream, HboneError> {
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default();
        *resp.headers_mut() = headers;
        let send = self.respond.send_response(resp, false)?;
        Ok(H2Stream::new(send, self.body))
    }
}

/// Serves the HTTP/2 side of an accepted mutual-TLS connection until the client goes away or
/// `shutdown` resolves (then GOAWAY is sent and open streams may finish). `handle` is spawned
/// for every CONNECT.
pub async fn serve<IO, H, F>(
    io: IO,
    peer_identity: Identity,
    handle: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(IncomingConnect) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let handshake = settings::server_builder().handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| HboneError::Timeout(HANDSHAKE_TIMEOUT))??;
    tokio::pin!(shutdown);
    let mut draining = false;
    // The client side pings too; a peer that stops answering is dropped.
    let dead_peer = DeadPeer::watch(conn.ping_pong(), keepalive::INTERVAL, keepalive::TIMEOUT);
    tokio::pin!(dead_peer);
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
            () = &mut dead_peer => {
                debug!("HBONE peer stopped answering PINGs; closing");
                return Ok(());
            }
        };
        let Some(next) = next else { return Ok(()) };
        let (request, respond) = match next {
            Ok(r) => r,
            Err(e) if e.is_go_away() || e.is_io() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match check(&request) {
            Ok(target) => {
                let (parts, body) = request.into_parts();
                let incoming = IncomingConnect {
                    target,
                    headers: parts.headers,
                    peer_identity: peer_identity.clone(),
                    respond,
                    body,
                };
                tokio::spawn(handle(incoming));
            }
            Err(status) => {
                debug!(method = %request.method(), uri = %request.uri(), %status, "refusing HBONE request");
                let mut respond = respond;
                let resp = Response::builder()
                    .status(status)
                    .body(())
                    .unwrap_or_default();
                let _ = respond.send_response(resp, true);
            }
        }
    }
}

fn check(request: &Request<RecvStream>) -> Result<Target, StatusCode> {
    if request.method() != Method::CONNECT {
        return Err(StatusCode::BAD_REQUEST);
    }
    let authority = request.uri().authority().ok_or(StatusCode::BAD_REQUEST)?;
    Target::parse(authority.as_str()).ok_or(StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_parse_like_istio() {
        assert_eq!(
            Target::parse("10.0.0.1:8080"),
            Some(Target::Addr("10.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("[fd00::1]:80"),
            Some(Target::Addr("[fd00::1]:80".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("reviews.ns.svc.cluster.local:9080"),
            Some(Target::Host("reviews.ns.svc.cluster.local".into(), 9080))
        );
        for bad in [
            "10.0.0.1",
            "host",
            ":80",
            "a b:80",
            "host:99999",
            "host:port",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }
}
