//! The mesh's root certificates published as istiod publishes them: the ConfigMap
//! `istio-ca-root-cert` (key `root-cert.pem`), which ztunnel's DaemonSet mounts to verify the
//! control plane and its peers. Created when missing, updated when the roots change (root
//! rotation with `--extra-root-file`).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use std::collections::BTreeMap;
use tracing::info;

pub const NAME: &str = "istio-ca-root-cert";
pub const KEY: &str = "root-cert.pem";

/// Makes `namespace/istio-ca-root-cert` hold exactly `roots_pem`.
pub async fn publish(client: Client, namespace: &str, roots_pem: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let data = BTreeMap::from([(KEY.to_string(), roots_pem.to_string())]);
    match api.get_opt(NAME).await? {
        Some(existing) if existing.data.as_ref() == Some(&data) => return Ok(()),
        Some(_) => {
            let patch = serde_json::json!({"data": data});
            api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([(
                        "istio.io/config".to_string(),
                        "true".to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &cm).await?;
        }
    }
    info!(%namespace, name = NAME, "published the mesh's roots");
    Ok(())
}
