//! The CA root kept in a Kubernetes Secret, as istiod keeps its self-signed root in
//! `istio-system/istio-ca-secret` (`ca-cert.pem`, `ca-key.pem`): loaded when it exists,
//! generated and stored when it does not, so every control-plane replica and restart signs
//! with the same root.

use amesh_identity::{CaError, LocalCa};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, Client, api::PostParams};
use std::collections::BTreeMap;
use tracing::info;

const CERT_KEY: &str = "ca-cert.pem";
const KEY_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name}: key {key} is missing")]
    Missing {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    Root {
        namespace: String,
        name: String,
        source: Box<CaError>,
    },
}

/// Loads the root from `namespace/name`, or generates one and creates the Secret. When
/// another replica creates it first (409), that one's root is used.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<LocalCa, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |source| CaSecretError::Api {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    if let Some(secret) = api.get_opt(name).await.map_err(api_err)? {
        return from_secret(&secret, namespace, name);
    }
    let root_err = |source| CaSecretError::Root {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    let ca = LocalCa::generate(trust_domain).map_err(root_err)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.into(),
                ByteString(ca.root_pem().as_bytes().to_vec()),
            ),
            (KEY_KEY.into(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(%namespace, %name, "CA root generated and stored");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(api_err)?;
            from_secret(&secret, namespace, name)
        }
        Err(e) => Err(api_err(e)),
    }
}

fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<LocalCa, CaSecretError> {
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| CaSecretError::Missing {
                namespace: namespace.into(),
                name: name.into(),
                key,
            })
    };
    let ca = LocalCa::from_pems(&field(CERT_KEY)?, &field(KEY_KEY)?).map_err(|source| {
        CaSecretError::Root {
            namespace: namespace.into(),
            name: name.into(),
            source: Box::new(source),
        }
    })?;
    info!(%namespace, %name, "CA root loaded from the Secret");
    Ok(ca)
}
