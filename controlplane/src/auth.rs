//! Who is calling the control plane: a workload or node presenting a client certificate from
//! the mesh CA, or a node agent presenting the configured node token as a bearer token (the
//! local stand-in for Istio's Kubernetes service-account tokens).

use crate::serve::Peer;
use amesh_identity::Identity;
use tonic::{Request, Status};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Its client certificate names this identity.
    Certificate(Identity),
    /// It presented the node token.
    NodeToken,
}

/// The configured secrets.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    node_token: Option<String>,
}

impl Authenticator {
    pub fn new(node_token: Option<String>) -> Self {
        Self {
            node_token: node_token.map(|t| t.trim().to_string()),
        }
    }

    /// The caller of `request`; a wrong token is refused even when a certificate is also
    /// presented, so a misconfigured client is noticed.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("authorization is not a bearer token"))?;
            return match &self.node_token {
                Some(expected)
                    if constant_time_eq(expected.as_bytes(), token.trim().as_bytes()) =>
                {
                    Ok(Caller::NodeToken)
                }
                _ => Err(Status::unauthenticated("the bearer token is not valid")),
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

    #[test]
    fn tokens_and_certificates() {
        let auth = Authenticator::new(Some("s3cret\n".into()));
        assert_eq!(
            auth.authenticate(&with_token("s3cret")).ok(),
            Some(Caller::NodeToken)
        );
        let wrong = auth
            .authenticate(&with_token("s3crex"))
            .expect_err("wrong token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = auth
            .authenticate(&Request::new(()))
            .expect_err("nothing presented");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let no_token_configured = Authenticator::new(None);
        assert!(no_token_configured.authenticate(&with_token("")).is_err());

        let id = Identity::new("cluster.local", "ns", "sa");
        let mut r = Request::new(());
        r.extensions_mut().insert(Peer {
            addr: "127.0.0.1:1".parse().expect("addr"),
            identity: Some(id.clone()),
        });
        assert_eq!(auth.authenticate(&r).ok(), Some(Caller::Certificate(id)));
    }
}
