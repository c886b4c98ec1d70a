//! A workload certificate: a key made here, and the chain a CA signed for it.

use crate::Identity;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA returned no certificate")]
    EmptyChain,
    #[error("the CA returned a certificate that does not parse: {0}")]
    Parse(String),
    #[error("the CA signed {got} but {want} was asked for")]
    WrongIdentity { want: String, got: String },
}

/// A certificate for one identity, ready for TLS.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first; the root(s) the CA returned last.
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// A new key pair and a CSR (PEM) whose only SAN is the identity's URI.
    pub fn request(identity: &Identity) -> Result<(KeyPair, String), CertError> {
        Self::request_with_dns_names(identity, &[])
    }

    /// Like [`WorkloadCert::request`], with DNS names after the URI (a server that clients
    /// verify by host name, as Istio's ztunnel verifies istiod).
    pub fn request_with_dns_names(
        identity: &Identity,
        dns_names: &[String],
    ) -> Result<(KeyPair, String), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        let csr = params.serialize_request(&key)?.pem()?;
        Ok((key, csr))
    }

    /// Pairs the key with the chain the CA returned, checking it is for `identity`.
    pub fn from_signed(
        identity: &Identity,
        key: &KeyPair,
        chain_pem: &[String],
    ) -> Result<Self, CertError> {
        let mut chain = Vec::new();
        for pem in chain_pem {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(der.map_err(|e| CertError::Parse(e.to_string()))?);
            }
        }
        let leaf = chain.first().ok_or(CertError::EmptyChain)?;
        let got = identity_of(leaf).ok();
        if got.as_ref() != Some(identity) {
            return Err(CertError::WrongIdentity {
                want: identity.to_string(),
                got: got.map_or_else(|| "no SPIFFE id".to_string(), |g| g.to_string()),
            });
        }
        let (not_before, not_after) = validity(leaf)?;
        Ok(Self {
            identity: identity.clone(),
            chain,
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// When to renew: half way through the validity period.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        t >= self.not_before && t < self.not_after
    }
}

/// The SPIFFE identity in a certificate's URI SANs.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::Parse(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .ok_or_else(|| CertError::Parse("no subject alternative names".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri.parse::<Identity>().ok(),
            _ => None,
        })
        .ok_or_else(|| CertError::Parse("no spiffe:// URI SAN".into()))
}

fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::Parse(e.to_string()))?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((
        to_system(x509.validity().not_before),
        to_system(x509.validity().not_after),
    ))
}
