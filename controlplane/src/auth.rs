//! Who is calling the control plane: a workload or node presenting a client certificate from
//! the mesh CA, or a node agent presenting the configured node token as a bearer token (the
//! local stand-in for Istio's Kubernetes service-account tokens).

use amesh_identity::Identity;
use std::{fmt, net::SocketAddr};
use tonic::{Request, Status};

/// Who is on the other end of a gRPC stream (a request extension).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: Option<Identity>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(id) => write!(f, "{} ({})", self.addr, id.principal()),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Its client certificate names this identity.
    Certificate(Identity),
    /// It presented the node token (local mode).
    NodeToken,
    /// A Kubernetes service-account token, reviewed by the API server; bound tokens also
    /// name the caller's pod and node.
    ServiceAccount {
        identity: Identity,
        pod: Option<String>,
        node: Option<String>,
    },
}

/// The audience istiod (and so amesh) requires of service-account tokens.
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// The configured ways to authenticate.
#[derive(Clone, Default)]
pub struct Authenticator {
    node_token: Option<String>,
    trust_domain: String,
    /// In Kubernetes mode: bearer tokens are checked with TokenReview.
    reviewer: Option<kube::Client>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("node_token", &self.node_token.as_ref().map(|_| "<set>"))
            .field("token_review", &self.reviewer.is_some())
            .finish()
    }
}

impl Authenticator {
    pub fn new(node_token: Option<String>, trust_domain: &str) -> Self {
        Self {
            node_token: node_token.map(|t| t.trim().to_string()),
            trust_domain: trust_domain.to_string(),
            reviewer: None,
        }
    }

    /// Reviews bearer tokens with the API server (Kubernetes mode).
    pub fn with_token_review(mut self, client: kube::Client) -> Self {
        self.reviewer = Some(client);
        self
    }

    /// The caller of `request`. A bearer token, when present, decides (a bad one is refused
    /// even next to a good certificate, so a misconfigured client is noticed).
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| Status::unauthenticated("authorization is not a bearer token"))?;
            if let Some(expected) = &self.node_token
                && constant_time_eq(expected.as_bytes(), token.as_bytes())
            {
                return Ok(Caller::NodeToken);
            }
            return match &self.reviewer {
                Some(client) => review(client, token, &self.trust_domain).await,
                None => Err(Status::unauthenticated("the bearer token is not valid")),
            };
        }
        request
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.identity.clone())
            .map(Caller::Certificate)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no client certificate from the mesh CA and no bearer token",
                )
            })
    }
}

/// Asks the API server who `token` belongs to (audience `istio-ca`).
async fn review(client: &kube::Client, token: &str, trust_domain: &str) -> Result<Caller, Status> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let reviewed = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(Status::unauthenticated(format!(
            "token rejected: {}",
            status.error.unwrap_or_default()
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return Err(Status::unauthenticated(format!(
            "{username} is not a service account"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    Ok(Caller::ServiceAccount {
        identity: Identity::new(trust_domain, namespace, account),
        pod: first("authentication.kubernetes.io/pod-name"),
        node: first("authentication.kubernetes.io/node-name"),
    })
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(t: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
        r
    }

    #[tokio::test]
    async fn tokens_and_certificates() {
        let auth = Authenticator::new(Some("s3cret\n".into()), "cluster.local");
        assert_eq!(
            auth.authenticate(&with_token("s3cret")).await.ok(),
            Some(Caller::NodeToken)
        );
        let wrong = auth
            .authenticate(&with_token("s3crex"))
            .await
            .expect_err("wrong token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = auth
            .authenticate(&Request::new(()))
            .await
            .expect_err("nothing presented");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let no_token_configured = Authenticator::new(None, "cluster.local");
        assert!(
            no_token_configured
                .authenticate(&with_token(""))
                .await
                .is_err()
        );

        let id = Identity::new("cluster.local", "ns", "sa");
        let mut r = Request::new(());
        r.extensions_mut().insert(Peer {
            addr: "127.0.0.1:1".parse().expect("addr"),
            identity: Some(id.clone()),
        });
        assert_eq!(
            auth.authenticate(&r).await.ok(),
            Some(Caller::Certificate(id))
        );
    }
}
