//! TLS configurations for HBONE, as Istio's ztunnel sets them up: TLS 1.3 only, AES-GCM
//! suites, ALPN `h2`, no SNI, no session resumption, mutual authentication, and peer
//! identities checked against SPIFFE ids (never DNS names). The post-quantum hybrid
//! X25519MLKEM768 is offered first; peers without it fall back to X25519.

use crate::{Identity, WorkloadCert, identity_of};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{
        CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs, verify_tls12_signature,
        verify_tls13_signature,
    },
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use std::sync::Arc;

/// ALPN protocol HBONE requires.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("trust bundle: {0}")]
    Roots(String),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] Error),
}

/// The crypto provider: aws-lc-rs limited to the AES-GCM TLS 1.3 suites.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// Roots that peer chains must lead to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn from_pems(pems: &[String]) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for pem in pems {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let der = der.map_err(|e| TlsConfigError::Roots(e.to_string()))?;
                roots
                    .add(der)
                    .map_err(|e| TlsConfigError::Roots(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsConfigError::Roots("no root certificates".into()));
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }
}

/// A server config presenting `cert` and requiring a client certificate that chains to
/// `bundle` and names an identity in the same trust domain.
pub fn server_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let verifier = client_verifier(bundle, &provider, &cert.identity.trust_domain, true)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A server config for the control plane: its certificate comes from `certificates` (so it
/// can be renewed while serving), and a client may connect without a certificate (it must
/// then authenticate with a bearer token); one that presents a certificate is still checked.
pub fn server_config_client_cert_optional(
    certificates: Arc<dyn rustls::server::ResolvesServerCert>,
    trust_domain: &str,
    bundle: &TrustBundle,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let verifier = client_verifier(bundle, &provider, trust_domain, false)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// `cert` as rustls serves it.
pub fn certified_key(
    cert: &WorkloadCert,
    provider: &CryptoProvider,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsConfigError> {
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        cert.chain.clone(),
        cert.key(),
        provider,
    )?))
}

fn client_verifier(
    bundle: &TrustBundle,
    provider: &Arc<CryptoProvider>,
    trust_domain: &str,
    mandatory: bool,
) -> Result<Arc<SpiffeClientVerifier>, TlsConfigError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider.clone());
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let inner = builder
        .build()
        .map_err(|e| TlsConfigError::Roots(e.to_string()))?;
    Ok(Arc::new(SpiffeClientVerifier {
        inner,
        trust_domain: trust_domain.to_string(),
    }))
}

/// A client config presenting `cert` and accepting only servers whose certificate chains to
/// `bundle` and names one of `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    spiffe_client_config(Some(cert), bundle, expected, provider)
}

/// A client config with no certificate of its own (it authenticates otherwise, e.g. with a
/// bearer token), accepting only servers whose certificate chains to `bundle` and names one
/// of `expected`.
pub fn anonymous_client_config(
    bundle: &TrustBundle,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    spiffe_client_config(None, bundle, expected, provider)
}

fn spiffe_client_config(
    cert: Option<&WorkloadCert>,
    bundle: &TrustBundle,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.roots.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = with_client_cert(builder, cert)?;
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client config that verifies the server by host name against `bundle` (standard web
/// PKI rules), as Istio's ztunnel verifies istiod (`istiod.istio-system.svc`); presents
/// `cert` when given.
pub fn dns_client_config(
    bundle: &TrustBundle,
    cert: Option<&WorkloadCert>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        bundle.roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsConfigError::Roots(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    Ok(Arc::new(with_client_cert(builder, cert)?))
}

/// Finishes a client config: `cert` presented when given, HTTP/2 offered.
fn with_client_cert(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    cert: Option<&WorkloadCert>,
) -> Result<ClientConfig, TlsConfigError> {
    let mut config = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The name passed to the TLS client; not checked (identities are), not sent (no SNI).
pub fn server_name(ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

/// Checks a client's chain with webpki, then its SPIFFE trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        if id.trust_domain != self.trust_domain {
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a server's chain with webpki, then that it names an expected SPIFFE identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = identity_of(end_entity).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        if !self.expected.contains(&id) {
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(m, c, d, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(m, c, d, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalCa;
    use rustls::{ClientConnection, ServerConnection};
    use std::time::Duration;

    fn cert(ca: &LocalCa, td: &str, sa: &str) -> WorkloadCert {
        ca.issue(&Identity::new(td, "ns", sa), Duration::from_secs(3600))
            .unwrap()
    }

    /// Runs a handshake in memory; the server's view of the client identity on success.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<(Identity, String), Error> {
        let mut c = ClientConnection::new(client, server_name("10.0.0.1".parse().unwrap()))?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert_eq!(s.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(s.server_name(), None, "no SNI is sent");
        let peer = identity_of(&s.peer_certificates().unwrap()[0]).unwrap();
        let kx = format!("{:?}", c.negotiated_key_exchange_group().unwrap().name());
        Ok((peer, kx))
    }

    #[test]
    fn mutual_tls_checks_spiffe_identities() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let bundle = TrustBundle::from_pems(&[ca.root_pem().to_string()]).unwrap();
        let (client, server) = (
            cert(&ca, "cluster.local", "client"),
            cert(&ca, "cluster.local", "server"),
        );
        let server_cfg = server_config(&server, &bundle, provider()).unwrap();
        let good =
            client_config(&client, &bundle, vec![server.identity.clone()], provider()).unwrap();
        let (peer, kx) = handshake(good, server_cfg.clone()).unwrap();
        assert_eq!(
            peer, client.identity,
            "the server sees the client's SPIFFE id"
        );
        assert_eq!(kx, "X25519MLKEM768", "post-quantum hybrid preferred");

        // A client expecting a different server identity refuses.
        let wrong = client_config(
            &client,
            &bundle,
            vec![Identity::new("cluster.local", "ns", "other")],
            provider(),
        )
        .unwrap();
        assert!(handshake(wrong, server_cfg.clone()).is_err());

        // A client from another trust domain (same root) is refused by the server.
        let foreign = cert(&ca, "other.domain", "client");
        let foreign_cfg =
            client_config(&foreign, &bundle, vec![server.identity.clone()], provider()).unwrap();
        assert!(handshake(foreign_cfg, server_cfg.clone()).is_err());

        // A client whose chain leads to another root is refused.
        let other_ca = LocalCa::generate("cluster.local").unwrap();
        let stranger = cert(&other_ca, "cluster.local", "client");
        let stranger_cfg = client_config(
            &stranger,
            &bundle,
            vec![server.identity.clone()],
            provider(),
        )
        .unwrap();
        assert!(handshake(stranger_cfg, server_cfg).is_err());
    }

    #[test]
    fn a_peer_without_post_quantum_falls_back() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let bundle = TrustBundle::from_pems(&[ca.root_pem().to_string()]).unwrap();
        let (client, server) = (
            cert(&ca, "cluster.local", "c"),
            cert(&ca, "cluster.local", "s"),
        );
        let mut classic = (*provider()).clone();
        classic.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        let c = client_config(
            &client,
            &bundle,
            vec![server.identity.clone()],
            Arc::new(classic),
        )
        .unwrap();
        let (_, kx) = handshake(c, server_config(&server, &bundle, provider()).unwrap()).unwrap();
        assert_eq!(kx, "X25519");
    }
}
