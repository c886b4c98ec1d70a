//! Marking pods enrolled the way Istio does: the annotation
//! `ambient.istio.io/redirection: enabled`, set once ztunnel acknowledged the pod and removed
//! when it leaves the mesh. Without a cluster the agent's state file carries the same fact.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::mpsc;
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

/// One change of a pod's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub namespace: String,
    pub name: String,
    /// The pod's UID: the patch only applies to that pod, not to a newer one of the name.
    pub uid: String,
    pub enabled: bool,
}

impl Marker {
    /// True when marks go to the cluster (and so can be compared with what it shows).
    pub fn is_kube(&self) -> bool {
        matches!(self, Marker::Kube(_))
    }

    /// Applies marks one at a time, in the order they were made (a release followed by a
    /// re-enrolment must not land the other way round).
    pub fn start(self) -> mpsc::UnboundedSender<Mark> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Mark>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                self.mark(&m).await;
            }
        });
        tx
    }

    async fn mark(&self, m: &Mark) {
        let pod = format!("{}/{}", m.namespace, m.name);
        let Marker::Kube(client) = self else {
            return info!(%pod, enabled = m.enabled, "redirection recorded");
        };
        let value = if m.enabled {
            json!("enabled")
        } else {
            json!(null)
        };
        let mut patch = json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
        if !m.uid.is_empty() {
            // A precondition: the API server refuses the patch for another pod of the name.
            patch["metadata"]["uid"] = json!(m.uid);
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &m.namespace);
        // The status subresource, as Istio's node agent does: its role then needs no right
        // to change pod specs.
        match api
            .patch_status(&m.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(%pod, enabled = m.enabled, "annotated"),
            Err(e) => warn!(%pod, error = %e, "annotating the pod"),
        }
    }
}
