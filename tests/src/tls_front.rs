//! A TLS front for a plain-HTTP test server (the Kubernetes API emulator): real TLS with a
//! certificate for 127.0.0.1 from a CA made per run, relaying bytes to the server behind it and
//! noting each `Authorization` header it sees, so clients' HTTPS paths are tested end to end.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum TlsFrontError {
    #[error("making the test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TlsFrontError {
    move |source| TlsFrontError::Io { what, source }
}

/// The front; stops (and removes its CA file) when dropped.
#[derive(Debug)]
pub struct TlsFront {
    address: SocketAddr,
    ca_file: PathBuf,
    authorizations: Arc<Mutex<Vec<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsFront {
    /// Listens on a loopback port in front of `backend`, writing its CA to `ca_file`.
    pub fn start(backend: SocketAddr, ca_file: &Path) -> Result<Self, TlsFrontError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(ca_file, ca_cert.pem()).map_err(io("writing the CA file"))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io("starting the front's runtime"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(io("binding the front"))?;
        let address = listener.local_addr().map_err(io("the front's address"))?;
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        runtime.spawn(accept_loop(
            listener,
            acceptor,
            backend,
            authorizations.clone(),
        ));
        Ok(Self {
            address,
            ca_file: ca_file.to_path_buf(),
            authorizations,
            runtime: Some(runtime),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Every `Authorization` header value clients sent, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        tokio::spawn(async move {
            // A client that refuses the certificate ends its own connection only.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(back) = tokio::net::TcpStream::connect(backend).await else {
                return;
            };
            relay(tls, back, seen).await;
        });
    }
}

/// Copies both ways, noting `Authorization` headers on the way in.
async fn relay(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    back: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let (mut client_r, mut client_w) = tokio::io::split(tls);
    let (mut back_r, mut back_w) = back.into_split();
    let inbound = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client_r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            note_authorizations(&buf[..n], &seen);
            if back_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = back_w.shutdown().await;
    };
    let outbound = async move {
        let _ = tokio::io::copy(&mut back_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    tokio::join!(inbound, outbound);
}

fn note_authorizations(bytes: &[u8], seen: &Mutex<Vec<String>>) {
    let text = String::from_utf8_lossy(bytes);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for line in text.split("\r\n") {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            seen.push(value.trim().to_string());
        }
    }
}
