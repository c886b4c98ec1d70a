//! Istio's CA protocol from a node proxy's side: `CreateCertificate` for the pods on this
//! node, naming each pod's identity in the `ImpersonatedIdentity` metadata field, as Istio's
//! ztunnel does (ztunnel uses it instead of its in-process CA when `--ca-address` is set).

use crate::control::{Connector, Credentials};
use amesh_identity::{CaClient, CaError, Identity, ca::BoxFuture};
use amesh_proto::ca::{
    IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
};
use std::time::Duration;
use tonic::{Code, transport::Channel};

/// A [`CaClient`] that asks the control plane's `IstioCertificateService`.
#[derive(Debug)]
pub struct IstioCaClient {
    channel: Channel,
    credentials: Credentials,
    roots: Vec<String>,
}

impl IstioCaClient {
    /// A client that connects on first use and reconnects after failures (the certificate
    /// manager retries with backoff).
    pub fn new(connector: Connector, credentials: Credentials, roots: Vec<String>) -> Self {
        let channel = tonic::transport::Endpoint::from_static("http://amesh-ca")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector);
        Self {
            channel,
            credentials,
            roots,
        }
    }
}

impl CaClient for IstioCaClient {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaError>> {
        Box::pin(async move {
            use prost_types::{Struct, Value, value::Kind};
            let metadata = Struct {
                fields: [(
                    "ImpersonatedIdentity".to_string(),
                    Value {
                        kind: Some(Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            };
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: csr_pem.to_string(),
                validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
                metadata: Some(metadata),
            });
            self.credentials.apply(&mut request).await;
            let mut client = IstioCertificateServiceClient::new(self.channel.clone());
            match client.create_certificate(request).await {
                Ok(response) => Ok(response.into_inner().cert_chain),
                Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                    Err(CaError::Unavailable(s.message().to_string()))
                }
                Err(s) => Err(CaError::Refused(format!("{:?}: {}", s.code(), s.message()))),
            }
        })
    }

    fn roots(&self) -> Vec<String> {
        self.roots.clone()
    }
}
