//! Marking pods enrolled the way Istio does: the annotation
//! `ambient.istio.io/redirection: enabled`, set once ztunnel acknowledged the pod and removed
//! when it leaves the mesh. Without a cluster the agent's state file carries the same fact.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tracing::{info, warn};

pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

#[derive(Clone)]
pub enum Marker {
    Kube(Client),
    /// The state file's `redirection_enabled` is the mark.
    Local,
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Marker::Kube(_) => "Kube",
            Marker::Local => "Local",
        })
    }
}

impl Marker {
    pub async fn mark(&self, namespace: &str, name: &str, enabled: bool) {
        let Marker::Kube(client) = self else {
            return info!(pod = %format!("{namespace}/{name}"), enabled, "redirection recorded");
        };
        let value = if enabled {
            json!("enabled")
        } else {
            json!(null)
        };
        let patch = json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        // The status subresource, as Istio's node agent does: its role then needs no right
        // to change pod specs.
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(pod = %format!("{namespace}/{name}"), enabled, "annotated"),
            Err(e) => warn!(pod = %format!("{namespace}/{name}"), error = %e, "annotating the pod"),
        }
    }
}
