//! JWKS for RequestAuthentication's `jwksUri`, fetched by the control plane and handed to
//! waypoints inline, as istiod does: each URI is fetched when a translation first needs it
//! and again, in the background, once its copy is older than [`REFRESH`]; a failed fetch
//! keeps the last good keys (and is retried after [`RETRY`]); with none, the rule carries the
//! error and the waypoint refuses that issuer's tokens (fail closed). HTTPS is verified against the CA
//! bundle given (`--jwks-ca-file`, by default the system's).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// How long fetched keys are used before they are fetched again (Istio's default).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(30);
/// Bound on one fetch.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS accepted.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading the CA bundle {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA bundle {0} holds no certificate")]
    NoCa(String),
}

#[derive(Debug, Clone)]
struct Entry {
    /// The last good keys.
    good: Option<String>,
    /// The last failure, if the last fetch failed.
    error: Option<String>,
    fetched: Instant,
}

/// The fetcher and its cache; cheap to clone (shared).
#[derive(Clone)]
pub struct Jwks {
    tls: Option<Arc<rustls::ClientConfig>>,
    cache: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl Default for Jwks {
    /// Without a CA bundle: only `http://` URIs can be fetched.
    fn default() -> Self {
        Self {
            tls: None,
            cache: Arc::default(),
        }
    }
}

impl Jwks {
    /// Verifies HTTPS servers with the PEM bundle at `ca_file`.
    pub fn new(ca_file: &Path) -> Result<Self, JwksError> {
        let text = std::fs::read(ca_file).map_err(|source| JwksError::CaFile {
            path: ca_file.display().to_string(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&text).flatten() {
            let _ = roots.add(der);
        }
        if roots.is_empty() {
            return Err(JwksError::NoCa(ca_file.display().to_string()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::CaFile {
            path: ca_file.display().to_string(),
            source: std::io::Error::other(e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            tls: Some(Arc::new(tls)),
            cache: Arc::default(),
        })
    }

    /// The keys at `uri`. Only a URI never fetched before is fetched now, blocking the
    /// caller (on the blocking pool or outside any runtime, so the first translation has
    /// them); refreshes and retries of failed fetches run in the background and the cached
    /// keys (or error) answer meanwhile, so an unreachable issuer never holds up a
    /// translation more than once. `Err`: why there are none.
    pub fn resolve(&self, uri: &str) -> Result<String, String> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uri)
            .cloned();
        let entry = match cached {
            None => {
                let fetched = self.fetch_blocking(uri);
                self.record(uri, fetched)
            }
            Some(e) => {
                let due = match &e.error {
                    Some(_) => e.fetched.elapsed() >= RETRY,
                    None => e.fetched.elapsed() >= REFRESH,
                };
                if due {
                    self.refresh_in_background(uri);
                }
                e
            }
        };
        match (entry.good, entry.error) {
            (Some(keys), _) => Ok(keys),
            (None, Some(e)) => Err(e),
            (None, None) => Err("not fetched".into()),
        }
    }

    /// Stores a fetch's outcome (keeping the last good keys on failure).
    fn record(&self, uri: &str, fetched: Result<String, String>) -> Entry {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.entry(uri.to_string()).or_insert(Entry {
            good: None,
            error: None,
            fetched: Instant::now(),
        });
        entry.fetched = Instant::now();
        match fetched {
            Ok(keys) => {
                if entry.good.as_deref() != Some(&keys) {
                    info!(uri, "JWKS fetched");
                }
                entry.good = Some(keys);
                entry.error = None;
            }
            Err(e) => {
                warn!(uri, error = %e, kept_last_good = entry.good.is_some(), "JWKS fetch failed");
                entry.error = Some(e);
            }
        }
        entry.clone()
    }

    fn refresh_in_background(&self, uri: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Marked as fetched now, so that concurrent translations start one refresh only.
        if let Some(e) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(uri)
        {
            e.fetched = Instant::now();
        }
        let (this, uri) = (self.clone(), uri.to_string());
        handle.spawn(async move {
            let fetched = match tokio::time::timeout(TIMEOUT, this.fetch(&uri)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
            };
            this.record(&uri, fetched);
        });
    }

    fn fetch_blocking(&self, uri: &str) -> Result<String, String> {
        let fut = tokio::time::timeout(TIMEOUT, self.fetch(uri));
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(fut),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(fut),
        };
        result.map_err(|_| format!("no answer within {TIMEOUT:?}"))?
    }

    async fn fetch(&self, uri: &str) -> Result<String, String> {
        let url: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri:?} is not an http(s) URL")),
        };
        let host = url.host().ok_or("no host")?.to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let req = http::Request::get(path)
            .header(
                http::header::HOST,
                url.authority().map_or(host.clone(), |a| a.to_string()),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = if https {
            let tls = self
                .tls
                .clone()
                .ok_or("https needs a CA bundle (--jwks-ca-file)")?;
            let name = ServerName::try_from(bare.clone()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(TokioIo::new(stream), req).await?
        } else {
            send(TokioIo::new(tcp), req).await?
        };
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_string())?;
        amesh_policy::jwt::check_jwks(&text)?;
        Ok(text)
    }
}

async fn send<T>(
    io: TokioIo<T>,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(|e| e.to_string())
}
