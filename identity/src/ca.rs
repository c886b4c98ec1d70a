//! The certificate authority seam, and an in-process CA.
//!
//! [`CaClient`] is what the certificate manager asks; [`LocalCa`] implements it with a root
//! kept on disk so that several ztunnels on one machine share a trust bundle. Istio's
//! `CreateCertificate` client implements the same trait.

use crate::{Identity, WorkloadCert};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

/// A boxed future, so that CA clients can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CSR does not parse or its signature is invalid: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked:?}, not {identity}")]
    IdentityMismatch {
        identity: Identity,
        asked: Vec<String>,
    },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("CA files in {dir}: {reason}")]
    Files { dir: PathBuf, reason: String },
    #[error("the CA is unreachable: {0}")]
    Unavailable(String),
    #[error("the CA refused: {0}")]
    Refused(String),
    #[error("the CA root does not load: {0}")]
    Root(String),
}

/// Signs certificate requests for workload identities.
pub trait CaClient: Send + Sync + 'static {
    /// Signs `csr_pem` for `identity`, valid for `validity`; returns the chain as PEM, leaf
    /// first and root last.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaError>>;

    /// The roots peers' chains must lead to (PEM).
    fn roots(&self) -> Vec<String>;
}

/// An in-process CA with an ECDSA P-256 root.
pub struct LocalCa {
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// How far back a certificate's validity starts, to absorb clock skew between nodes.
    backdate: Duration,
}

/// The default backdating of certificates.
const BACKDATE: Duration = Duration::from_secs(60);

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
/// Roots made here live ten years; workload certificates are short-lived.
const ROOT_VALIDITY_DAYS: i64 = 3650;

impl LocalCa {
    /// A fresh root for `trust_domain`, kept in memory.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let sign_err = |e: rcgen::Error| CaError::Sign(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "amesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(ROOT_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(sign_err)?;
        Ok(Self {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            backdate: BACKDATE,
        })
    }

    /// Loads the root kept in `dir`, or makes one and keeps it there. Several processes may
    /// race: the root is written to a private directory and renamed into place, and a loser
    /// loads the winner's.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        if dir.join(ROOT_CERT).exists() {
            return Self::load(dir);
        }
        let files_err = |reason: String| CaError::Files {
            dir: dir.to_path_buf(),
            reason,
        };
        let ca = Self::generate(trust_domain)?;
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(|e| files_err(e.to_string()))?;
        std::fs::write(tmp.join(ROOT_CERT), &ca.root_pem).map_err(|e| files_err(e.to_string()))?;
        write_private(&tmp.join(ROOT_KEY), &ca.issuer.key().serialize_pem())
            .map_err(|e| files_err(e.to_string()))?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| files_err(e.to_string()))?;
        }
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(ca),
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Self::load(dir)
            }
        }
    }

    /// Loads a root certificate and key (PEM) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let files_err = |reason: String| CaError::Files {
            dir: dir.to_path_buf(),
            reason,
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| files_err(format!("{name}: {e}")))
        };
        let root_pem = read(ROOT_CERT)?;
        let key_pem = read(ROOT_KEY)?;
        Self::from_pems(&root_pem, &key_pem).map_err(|e| files_err(e.to_string()))
    }

    /// A CA from its root certificate and key (PEM), e.g. kept in a Kubernetes Secret.
    pub fn from_pems(root_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Root(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(root_pem, key)
            .map_err(|e| CaError::Root(format!("certificate: {e}")))?;
        Ok(Self {
            root_pem: root_pem.to_string(),
            issuer,
            backdate: BACKDATE,
        })
    }

    /// The root's private key (PEM), to persist it (a Secret, a file).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Changes how far back certificates' validity starts (tests use 0 to see renewals soon).
    pub fn with_backdate(mut self, backdate: Duration) -> Self {
        self.backdate = backdate;
        self
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs a CSR whose only SAN must be `identity`'s URI.
    pub fn sign_csr(
        &self,
        identity: &Identity,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<Vec<String>, CaError> {
        self.sign_csr_with_dns_names(identity, &[], csr_pem, validity)
    }

    /// Signs a CSR whose SANs must be exactly `identity`'s URI and then `dns_names`.
    fn sign_csr_with_dns_names(
        &self,
        identity: &Identity,
        dns_names: &[String],
        csr_pem: &str,
        validity: Duration,
    ) -> Result<Vec<String>, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("dns:{}", d.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        let expected: Vec<String> = std::iter::once(identity.to_string())
            .chain(dns_names.iter().map(|d| format!("dns:{d}")))
            .collect();
        if asked != expected {
            return Err(CaError::IdentityMismatch {
                identity: identity.clone(),
                asked,
            });
        }
        let p = &mut csr.params;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now
            - time::Duration::try_from(self.backdate).map_err(|e| CaError::Sign(e.to_string()))?;
        p.not_after =
            now + time::Duration::try_from(validity).map_err(|e| CaError::Sign(e.to_string()))?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }

    /// Issues a server certificate for `identity` that also names `dns_names` (the control
    /// plane's, which Istio's ztunnel verifies by host name).
    pub fn issue_server(
        &self,
        identity: &Identity,
        dns_names: &[String],
        validity: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let (key, csr) = WorkloadCert::request_with_dns_names(identity, dns_names)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let chain = self.sign_csr_with_dns_names(identity, dns_names, &csr, validity)?;
        WorkloadCert::from_signed(identity, &key, &chain).map_err(|e| CaError::Sign(e.to_string()))
    }

    /// Issues a certificate for `identity` directly (key made here): for tests and tools.
    pub fn issue(&self, identity: &Identity, validity: Duration) -> Result<WorkloadCert, CaError> {
        let (key, csr) =
            WorkloadCert::request(identity).map_err(|e| CaError::Sign(e.to_string()))?;
        let chain = self.sign_csr(identity, &csr, validity)?;
        WorkloadCert::from_signed(identity, &key, &chain).map_err(|e| CaError::Sign(e.to_string()))
    }
}

impl CaClient for LocalCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaError>> {
        Box::pin(async move { self.sign_csr(identity, csr_pem, validity) })
    }

    fn roots(&self) -> Vec<String> {
        vec![self.root_pem.clone()]
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_only_the_identity_asked_for() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(cert.identity, id);
        assert_eq!(cert.chain.len(), 2);
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(
            life >= Duration::from_secs(3600) && life <= Duration::from_secs(3700),
            "{life:?}"
        );

        let other = Identity::new("cluster.local", "ns1", "other");
        let (_, csr) = WorkloadCert::request(&other).unwrap();
        let err = ca.sign_csr(&id, &csr, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
        assert!(matches!(
            ca.sign_csr(&id, "garbage", Duration::from_secs(60)),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn a_root_kept_on_disk_is_shared() {
        let dir = std::env::temp_dir().join(format!("amesh-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = LocalCa::load_or_create(&dir, "cluster.local").unwrap();
        let b = LocalCa::load_or_create(&dir, "cluster.local").unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
        let id = Identity::new("cluster.local", "ns", "sa");
        let chain = b
            .sign_csr(
                &id,
                &WorkloadCert::request(&id).unwrap().1,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(chain.last().unwrap(), a.root_pem());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
