//! Route status in Kubernetes mode: each HTTPRoute, GRPCRoute and TCPRoute gets
//! `status.parents` (per parent reference, under istiod's controller name) with `Accepted`
//! and `ResolvedRefs`, as the translation found them. A status is written only when it
//! differs from what the route has (transition times aside) and from what was last written;
//! an API error is logged and retried on the next change.

use crate::routes::RouteStatus;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};
use std::collections::HashMap;
use tracing::{info, warn};

fn api_resource(kind: &str) -> Option<ApiResource> {
    let (version, plural) = match kind {
        "HTTPRoute" => ("v1", "httproutes"),
        "GRPCRoute" => ("v1", "grpcroutes"),
        "TCPRoute" => ("v1alpha2", "tcproutes"),
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", version, kind),
        plural,
    ))
}

/// The status without its transition times, for comparing.
fn without_times(status: &Value) -> Value {
    let mut v = status.clone();
    for parent in v["parents"].as_array_mut().into_iter().flatten() {
        for c in parent["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// Whether the route already has the status it should have (in the entries of this
/// controller; others' are theirs).
pub fn up_to_date(have: &Value, want: &Value) -> bool {
    let mine = |v: &Value| -> Vec<Value> {
        without_times(v)["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"] == crate::routes::CONTROLLER_NAME)
            .cloned()
            .collect()
    };
    mine(have) == mine(want)
}

/// Writes route status; remembers what it wrote.
pub struct Writer {
    client: Client,
    written: HashMap<String, Value>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("written", &self.written.len())
            .finish()
    }
}

impl Writer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: HashMap::new(),
        }
    }

    pub async fn write(&mut self, statuses: &[RouteStatus]) {
        for s in statuses {
            let key = format!("{}/{}/{}", s.kind, s.namespace, s.name);
            if self.written.get(&key) == Some(&s.want) || up_to_date(&s.have, &s.want) {
                self.written.insert(key, s.want.clone());
                continue;
            }
            let Some(resource) = api_resource(s.kind) else {
                continue;
            };
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let mut want = s.want.clone();
            // Other controllers' entries stay (the list is replaced whole by the patch).
            let others: Vec<Value> = s.have["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["controllerName"] != crate::routes::CONTROLLER_NAME)
                .cloned()
                .collect();
            for parent in want["parents"].as_array_mut().into_iter().flatten() {
                for c in parent["conditions"].as_array_mut().into_iter().flatten() {
                    c["lastTransitionTime"] = json!(now);
                }
            }
            if let Some(parents) = want["parents"].as_array_mut() {
                parents.extend(others);
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &s.namespace, &resource);
            let patch = json!({ "status": want });
            match api
                .patch_status(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(kind = s.kind, route = %format!("{}/{}", s.namespace, s.name), accepted = %s.want["parents"][0]["conditions"][0]["status"], "route status written");
                    self.written.insert(key, s.want.clone());
                }
                Err(e) => {
                    warn!(kind = s.kind, route = %format!("{}/{}", s.namespace, s.name), error = %e, "could not write the route's status (retried on the next change)");
                }
            }
        }
        // Routes that are gone are forgotten (one that comes back is written again).
        self.written.retain(|k, _| {
            statuses
                .iter()
                .any(|s| *k == format!("{}/{}/{}", s.kind, s.namespace, s.name))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_do_not_make_a_status_differ() {
        let want = json!({"parents": [{"parentRef": {"name": "web"}, "controllerName": "istio.io/gateway-controller", "conditions": [
            {"type": "Accepted", "status": "True", "observedGeneration": 2}]}]});
        let mut have = want.clone();
        have["parents"][0]["conditions"][0]["lastTransitionTime"] = json!("2026-12-01T00:00:00Z");
        assert!(up_to_date(&have, &want));
        have["parents"][0]["conditions"][0]["observedGeneration"] = json!(1);
        assert!(!up_to_date(&have, &want), "a new generation is written");
        assert!(!up_to_date(&Value::Null, &want), "no status yet");
        // Another controller's entry does not make it differ.
        let mut shared = want.clone();
        shared["parents"].as_array_mut().unwrap().push(
            json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/gateway"}),
        );
        assert!(up_to_date(&shared, &want));
    }
}
