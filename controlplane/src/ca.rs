//! Istio's CA service (`istio.v1.auth.IstioCertificateService/CreateCertificate`).
//!
//! Who may have which certificate:
//! - a caller authenticated by its client certificate or a service-account token may have
//!   its own identity;
//! - a node agent (the node token, or a certificate or token for one of the trusted node
//!   accounts, `istio-system/ztunnel` by default) may ask for another identity through the
//!   `ImpersonatedIdentity` metadata field, but only for a service account some workload runs
//!   as. With a Kubernetes token (bound to the caller's pod, so to its node) that workload must
//!   run on the caller's node, as istiod checks; with the local node token or a certificate
//!   nothing ties the caller to a node, so the check is mesh-wide.
//!
//! The CSR must name exactly the identity granted; the validity asked for is capped.

use crate::{
    auth::{Authenticator, Caller},
    catalog::Catalog,
};
use amesh_identity::{CaError, Identity, LocalCa};
use amesh_proto::ca::{
    IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_server::IstioCertificateService,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The metadata field naming the identity a node agent asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Debug, Clone)]
pub struct CaService {
    pub ca: Arc<LocalCa>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub auth: Authenticator,
    pub trust_domain: String,
    pub node_accounts: Vec<Identity>,
    /// Used when the request asks for none, and the most it may ask for.
    pub max_validity: Duration,
}

impl CaService {
    /// The identity `caller` may have signed, given what it asked for.
    fn grant(&self, caller: &Caller, impersonated: Option<&str>) -> Result<Identity, Status> {
        let own = match caller {
            Caller::Certificate(id) | Caller::ServiceAccount { identity: id, .. } => Some(id),
            Caller::NodeToken => None,
        };
        let Some(asked) = impersonated else {
            return own.cloned().ok_or_else(|| {
                Status::invalid_argument(format!(
                    "a node agent must name the identity it asks for in {IMPERSONATED_IDENTITY}"
                ))
            });
        };
        let asked: Identity = asked.parse().map_err(|e| {
            Status::invalid_argument(format!("{IMPERSONATED_IDENTITY} {asked:?}: {e}"))
        })?;
        if own == Some(&asked) {
            return Ok(asked);
        }
        let is_node_agent = own.is_none_or(|id| self.node_accounts.contains(id));
        if !is_node_agent {
            return Err(Status::permission_denied(format!(
                "{} may not ask for other identities",
                own.map_or_else(String::new, |id| id.to_string())
            )));
        }
        if asked.trust_domain != self.trust_domain {
            return Err(Status::permission_denied(format!(
                "{asked} is not in trust domain {}",
                self.trust_domain
            )));
        }
        let catalog = self.catalog.borrow().clone();
        let Some(nodes) = catalog
            .identities
            .get(&(asked.namespace.clone(), asked.service_account.clone()))
        else {
            return Err(Status::permission_denied(format!(
                "no workload in the mesh runs as {asked}"
            )));
        };
        // A Kubernetes node agent may only ask for identities of pods on its own node.
        if let Caller::ServiceAccount {
            identity,
            pod,
            node,
        } = caller
        {
            let node = node.clone().or_else(|| {
                let pod = pod.as_ref()?;
                catalog
                    .pod_nodes
                    .get(&(identity.namespace.clone(), pod.clone()))
                    .cloned()
            });
            let Some(node) = node else {
                return Err(Status::permission_denied(
                    "the token names no pod or node, so the caller's node is unknown",
                ));
            };
            if !nodes.contains(&node) {
                return Err(Status::permission_denied(format!(
                    "no pod on node {node} runs as {asked}"
                )));
            }
        }
        Ok(asked)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        let req = request.into_inner();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        let identity = self.grant(&caller, impersonated).inspect_err(|status| {
            warn!(?caller, reason = %status.message(), "certificate refused");
        })?;
        let validity = u64::try_from(req.validity_duration)
            .ok()
            .filter(|&s| s > 0)
            .map_or(self.max_validity, |s| {
                Duration::from_secs(s).min(self.max_validity)
            });
        let chain = self
            .ca
            .sign_csr(&identity, &req.csr, validity)
            .map_err(|e| match e {
                CaError::BadCsr(_) | CaError::IdentityMismatch { .. } => {
                    warn!(?caller, %identity, reason = %e, "certificate refused");
                    Status::invalid_argument(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
        info!(?caller, %identity, validity_secs = validity.as_secs(), "certificate signed");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
