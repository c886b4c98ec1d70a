//! The control plane's one port: TLS (a client presenting a certificate must chain to the
//! mesh CA; one without must bring a bearer token), then gRPC, ADS and the CA side by side.
//! TLS is done here with the mesh's SPIFFE verifiers rather than by tonic, so the caller's
//! identity is known to the services.

use crate::auth::Peer;
use amesh_identity::identity_of;
use amesh_proto::{
    ca::istio_certificate_service_server::IstioCertificateServiceServer,
    discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use amesh_ratelimit::Throttle;
use amesh_serve::Acceptor;
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Service, http};
use tracing::{debug, warn};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once, by default.
pub const DEFAULT_MAX_HANDSHAKES: usize = 512;

/// An accepted, authenticated connection.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections and hands tonic those that complete the handshake; a client that
/// fails it (no certificate, wrong CA, garbage) loses only its own connection. At most
/// `max_handshakes` handshakes run at once: connections past that are closed at once, so
/// unauthenticated clients that open connections and never finish cannot pile up.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    max_handshakes: usize,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(max_handshakes));
    tokio::spawn(async move {
        // Backs off after accept errors (EMFILE and the like) instead of spinning.
        let mut accepting = Acceptor::new("xds");
        let refusals = Throttle::new(Duration::from_secs(10));
        loop {
            let (tcp, addr) = accepting.accept(&listener).await;
            if tx.is_closed() {
                return;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if let Some(left_out) = refusals.allow() {
                    warn!(%addr, max_handshakes, left_out, "too many TLS handshakes in progress; connection closed");
                }
                drop(tcp);
                continue;
            };
            tokio::spawn(handshake(acceptor.clone(), tcp, addr, tx.clone(), slot));
        }
    });
    ReceiverStream::new(rx)
}

/// One TLS handshake, holding its slot until it ends.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
    slot: OwnedSemaphorePermit,
) {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
    drop(slot);
    match accepted {
        Ok(Ok(stream)) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity_of(c).ok());
            let peer = Peer { addr, identity };
            let _ = tx.send(Ok(TlsConn { stream, peer })).await;
        }
        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%addr, "TLS handshake timed out"),
    }
}

/// The two gRPC services on the one port, chosen by request path.
#[derive(Debug, Clone)]
pub struct Routes {
    pub ads: AggregatedDiscoveryServiceServer<crate::ads::Ads>,
    pub ca: IstioCertificateServiceServer<crate::ca::CaService>,
}

/// Path prefix of Istio's CA service.
const CA_PATH: &str = "/istio.v1.auth.IstioCertificateService/";

impl<B> Service<http::Request<B>> for Routes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(CA_PATH) {
            self.ca.call(request)
        } else {
            self.ads.call(request)
        }
    }
}
