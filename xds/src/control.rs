//! What a proxy's two control-plane clients (xDS and the CA) share: the TLS connection
//! tonic runs over, and the headers istiod expects (`authorization: Bearer <token>`,
//! `clusterid`).

use hyper_util::rt::TokioIo;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::net::TcpStream;
use tokio_rustls::{
    client::TlsStream,
    rustls::{ClientConfig, pki_types::ServerName},
};

/// Opens TCP + TLS to the control plane for tonic (verification is in the TLS config: the
/// mesh roots and the control plane's expected identity).
#[derive(Clone, Debug)]
pub struct Connector {
    /// `host:port`; a host name is resolved on every connection.
    pub address: String,
    pub tls: Arc<ClientConfig>,
    /// The name the certificate must carry, when the TLS config checks names (istiod);
    /// `None` when it checks the SPIFFE identity instead.
    pub server_name: Option<ServerName<'static>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (address, tls, name) = (
            self.address.clone(),
            self.tls.clone(),
            self.server_name.clone(),
        );
        Box::pin(async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let name = match name {
                Some(n) => n,
                None => amesh_identity::tls::server_name(tcp.peer_addr()?.ip()),
            };
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Credentials sent with every control-plane request.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Bearer token (istiod: the projected service-account token; amesh's control plane in
    /// local mode: the node token).
    pub token: Option<String>,
    pub cluster_id: String,
}

impl Credentials {
    /// Adds the headers to `request` (a value that is not a valid header is left out: the
    /// control plane then refuses the call and says why, which beats failing here).
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        let headers = request.metadata_mut();
        if let Some(token) = &self.token
            && let Ok(v) = format!("Bearer {}", token.trim()).parse()
        {
            headers.insert("authorization", v);
        }
        if let Ok(v) = self.cluster_id.parse() {
            headers.insert("clusterid", v);
        }
    }
}
