//! What a proxy's two control-plane clients (xDS and the CA) share: the TLS connection
//! tonic runs over, and the headers istiod expects (`authorization: Bearer <token>`,
//! `clusterid`).

use hyper_util::rt::TokioIo;
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
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

/// The bearer token, as the control plane expects it with every request.
#[derive(Clone, Debug, Default)]
pub enum Token {
    #[default]
    None,
    /// A fixed value.
    Value(String),
    /// A file read again for every request: Kubernetes rotates projected service-account
    /// tokens (Istio mounts ztunnel's at `/var/run/secrets/tokens/istio-token`), so a token
    /// read once at start expires under a long-running proxy. If a read fails the last
    /// token read is sent (the control plane then says whether it still holds).
    File {
        path: PathBuf,
        last: Arc<Mutex<Option<String>>>,
    },
}

/// Largest token file read (a service-account JWT is a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Read(#[from] amesh_sys::file::ReadFileError),
    #[error("{0} is not UTF-8")]
    NotUtf8(PathBuf),
}

impl Token {
    /// A token read from `path` for every request; fails now if it cannot be read, so that
    /// a wrong path is reported at start.
    pub fn file(path: PathBuf) -> Result<Self, TokenError> {
        let first = read_token(&path)?;
        Ok(Self::File {
            path,
            last: Arc::new(Mutex::new(Some(first))),
        })
    }

    /// The token to send now. The file is read on the blocking pool (never on a runtime
    /// worker) and its raw bytes are trimmed: a trailing newline must not break the header.
    pub async fn current(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Value(v) => Some(v.trim().to_string()),
            Self::File { path, last } => {
                let file = path.clone();
                let read = tokio::task::spawn_blocking(move || read_token(&file)).await;
                let mut held = last.lock().unwrap_or_else(PoisonError::into_inner);
                match read {
                    Ok(Ok(token)) => *held = Some(token),
                    Ok(Err(error)) => {
                        tracing::warn!(path = %path.display(), %error, "token file unreadable; sending the last one read");
                    }
                    Err(_) => {}
                }
                held.clone()
            }
        }
    }
}

fn read_token(path: &Path) -> Result<String, TokenError> {
    let bytes = amesh_sys::file::read_regular(path, MAX_TOKEN_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| TokenError::NotUtf8(path.to_path_buf()))?;
    Ok(text.trim().to_string())
}

/// Credentials sent with every control-plane request.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Bearer token (istiod: the projected service-account token; amesh's control plane in
    /// local mode: the node token).
    pub token: Token,
    pub cluster_id: String,
}

impl Credentials {
    /// Adds the headers to `request` (a value that is not a valid header is left out: the
    /// control plane then refuses the call and says why, which beats failing here).
    pub async fn apply<T>(&self, request: &mut tonic::Request<T>) {
        let token = self.token.current().await;
        let headers = request.metadata_mut();
        if let Some(token) = token
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            headers.insert("authorization", v);
        }
        if let Ok(v) = self.cluster_id.parse() {
            headers.insert("clusterid", v);
        }
    }

    /// Whether a token is sent at all.
    pub fn has_token(&self) -> bool {
        !matches!(self.token, Token::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Projected tokens rotate under a running proxy: each request sends the file's current
    /// contents, trimmed; a file gone missing keeps the last token; a FIFO is refused at once.
    #[tokio::test]
    async fn a_token_file_is_read_again_for_every_request() {
        let dir = std::env::temp_dir().join(format!("amesh-xds-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("istio-token");
        std::fs::write(&path, "first\n").unwrap();
        let token = Token::file(path.clone()).unwrap();
        assert_eq!(token.current().await.as_deref(), Some("first"));
        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(token.current().await.as_deref(), Some("second"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token.current().await.as_deref(), Some("second"));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let refused = Token::file(fifo).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(refused.to_string().contains("FIFO"), "{refused}");
        let mut request = tonic::Request::new(());
        Credentials {
            token: Token::Value("raw\n".into()),
            cluster_id: "Kubernetes".into(),
        }
        .apply(&mut request)
        .await;
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer raw")
        );
    }
}
