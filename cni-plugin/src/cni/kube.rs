//! The plugin's own look at the Kubernetes API, for when the node agent cannot be asked (as
//! Istio's plugin does): the pod and its namespace, decided by the agent's own rules. kube-rs
//! does the HTTP: TLS to a real API server (its CA and a token the agent keeps fresh next to
//! its socket, read again at each call and trimmed), or in the clear to a local proxy or a test emulator.

use amesh_kube::enrollment::{Decision, decide};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, Client, Config};
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

/// How to reach the API server from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeAccess {
    /// `https://host:port` (or `http://` for a local proxy).
    pub server: String,
    /// A bearer token, read at each call (the agent rotates it).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM roots that sign the API server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Why the API could not say.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("server {server:?}: expected http(s)://host:port")]
    Server { server: String },
    #[error("https needs ca_file (the API server's CA)")]
    NoCa,
    #[error("the token: {0}")]
    Token(String),
    #[error("setting up the API client: {0}")]
    Client(String),
    #[error("GET {what}: {source}")]
    Get { what: String, source: kube::Error },
    #[error("GET {what}: no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

/// Whether the pod must be in the mesh, from the API; `Err` when the API cannot say.
pub fn must_enroll(
    access: &KubeAccess,
    namespace: &str,
    name: &str,
    excluded: &[String],
    timeout: Duration,
) -> Result<bool, ApiError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ApiError::Client(e.to_string()))?;
    runtime.block_on(async {
        let client = client(access, timeout)?;
        let ns = get(Api::<Namespace>::all(client.clone()), namespace, timeout).await?;
        let pod = get(Api::<Pod>::namespaced(client, namespace), name, timeout).await?;
        Ok(decide(&pod, Some(&ns), excluded) == Decision::Enroll)
    })
}

/// One object by name, within `timeout`.
async fn get<K>(api: Api<K>, name: &str, timeout: Duration) -> Result<K, ApiError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let what = format!("{} {name}", K::kind(&K::DynamicType::default()));
    match tokio::time::timeout(timeout, api.get(name)).await {
        Ok(got) => got.map_err(|source| ApiError::Get { what, source }),
        Err(_) => Err(ApiError::Timeout { what, timeout }),
    }
}

/// A client for `access`: its server, roots and token file, with `timeout` on each step.
fn client(access: &KubeAccess, timeout: Duration) -> Result<Client, ApiError> {
    let server = || ApiError::Server {
        server: access.server.clone(),
    };
    let url: http::Uri = access.server.parse().map_err(|_| server())?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(server()),
    };
    if url.host().is_none() {
        return Err(server());
    }
    let mut config = Config::new(url);
    if https {
        config.root_cert_file = Some(access.ca_file.clone().ok_or(ApiError::NoCa)?);
    }
    if let Some(file) = &access.token_file {
        // Read now, at each call: the agent rotates it. Trimmed (a copy may end in a newline).
        let bytes = amesh_sys::file::read_regular(file, 64 << 10)
            .map_err(|e| ApiError::Token(e.to_string()))?;
        let token = String::from_utf8_lossy(&bytes);
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ApiError::Token(format!("{}: not a bearer token", file.display())))?;
        value.set_sensitive(true);
        config.headers.push((http::header::AUTHORIZATION, value));
    }
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Client::try_from(config).map_err(|e| ApiError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(server: &str) -> KubeAccess {
        KubeAccess {
            server: server.into(),
            token_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn servers_must_be_http_urls_and_https_needs_a_ca() {
        let t = Duration::from_secs(1);
        for bad in ["10.0.0.1:6443", "ftp://x", "https://"] {
            let e = must_enroll(&access(bad), "ns", "p", &[], t).expect_err(bad);
            assert!(matches!(e, ApiError::Server { .. }), "{bad}: {e}");
        }
        let e = must_enroll(&access("https://127.0.0.1:1"), "ns", "p", &[], t).expect_err("no ca");
        assert!(matches!(e, ApiError::NoCa), "{e}");
    }
}
