//! The control plane's own certificate, issued by the mesh CA and renewed at half life while
//! serving: every new TLS handshake gets the current one. It names the control plane's SPIFFE
//! identity (amesh's ztunnel checks that) and its DNS names (Istio's ztunnel checks those).

use amesh_identity::{CaError, Identity, LocalCa, WorkloadCert, tls};
use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};
use tokio_rustls::rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

/// How long to wait before retrying a failed renewal.
const RETRY: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] CaError),
    #[error("loading the serving certificate: {0}")]
    Load(#[from] tls::TlsConfigError),
}

fn issue(
    ca: &LocalCa,
    identity: &Identity,
    dns_names: &[String],
    validity: Duration,
    provider: &CryptoProvider,
) -> Result<(WorkloadCert, Arc<CertifiedKey>), ServingCertError> {
    let cert = ca.issue_server(identity, dns_names, validity)?;
    let key = tls::certified_key(&cert, provider)?;
    Ok((cert, key))
}

impl ServingCert {
    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Issues the first certificate now (failing if it cannot) and renews it in the
    /// background at half its life.
    pub fn start(
        ca: Arc<LocalCa>,
        identity: Identity,
        dns_names: Vec<String>,
        validity: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, ServingCertError> {
        let (cert, key) = issue(&ca, &identity, &dns_names, validity, &provider)?;
        let this = Arc::new(Self {
            current: RwLock::new(key),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut renew_at = cert.renew_at();
            loop {
                // Never faster than once a second, whatever the certificate says.
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
                let Some(this) = weak.upgrade() else { return };
                match issue(&ca, &identity, &dns_names, validity, &provider) {
                    Ok((cert, key)) => {
                        *this
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
                        renew_at = cert.renew_at();
                        info!(identity = %identity, "serving certificate renewed");
                    }
                    Err(e) => {
                        warn!(identity = %identity, error = %e, "serving certificate renewal failed; retrying");
                        renew_at = SystemTime::now() + RETRY;
                    }
                }
            }
        });
        Ok(this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_certificate_is_renewed_while_serving() {
        let ca = Arc::new(
            LocalCa::generate("cluster.local")
                .expect("CA")
                .with_backdate(Duration::ZERO),
        );
        let id = Identity::new("cluster.local", "istio-system", "istiod");
        let serving =
            ServingCert::start(ca, id, Vec::new(), Duration::from_secs(3), tls::provider())
                .expect("first certificate");
        let first = serving.current().cert[0].clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while serving.current().cert[0] == first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not renewed at half life"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
