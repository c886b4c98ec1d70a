//! Whether a pod belongs in the mesh: Istio's enrolment rule (the control plane's translation
//! and the node agent both use it, so both sides of the mesh agree) plus what only a node
//! cares about.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use std::collections::BTreeMap;

/// The label that puts a namespace or pod in the ambient mesh (`ambient`) or keeps a pod out
/// of it (`none`).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// The annotation Istio's injector puts on pods that run a sidecar.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// The container Istio injects into pods that run a sidecar.
const SIDECAR_CONTAINER: &str = "istio-proxy";

/// Whether a pod is in the ambient mesh (Istio's rule): not host-network, no sidecar, and
/// its own `istio.io/dataplane-mode` (`none` opts out, `ambient` in), else its namespace's.
pub fn enrolled(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> bool {
    let meta = &pod.metadata;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let sidecar = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS));
    if host_network || sidecar {
        return false;
    }
    match meta
        .labels
        .as_ref()
        .and_then(|l| l.get(DATAPLANE_MODE))
        .map(String::as_str)
    {
        Some("none") => false,
        Some("ambient") => true,
        _ => namespace_labels
            .get(DATAPLANE_MODE)
            .is_some_and(|m| m == "ambient"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Enroll,
    Skip(&'static str),
}

/// The decision for `pod` in `namespace` (None: the namespace is unknown).
pub fn decide(
    pod: &Pod,
    namespace: Option<&Namespace>,
    excluded_namespaces: &[String],
) -> Decision {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if excluded_namespaces.iter().any(|e| e == ns) {
        return Decision::Skip("namespace excluded from the mesh");
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Decision::Skip("host-network pod");
    }
    if spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_CONTAINER)
    }) {
        return Decision::Skip("pod runs an Istio sidecar");
    }
    let ns_labels = namespace
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    if enrolled(pod, &ns_labels) {
        Decision::Enroll
    } else {
        Decision::Skip("not selected by istio.io/dataplane-mode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }
    fn ns(labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": labels}}))
            .expect("namespace")
    }

    #[test]
    fn istio_rules() {
        let ambient = ns(json!({"istio.io/dataplane-mode": "ambient"}));
        let plain = ns(json!({}));
        let none = [String::from("kube-system")];
        let base = json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"containers": [{"name": "app"}]}});
        assert_eq!(
            decide(&pod(base.clone()), Some(&ambient), &none),
            Decision::Enroll
        );
        assert!(matches!(
            decide(&pod(base.clone()), Some(&plain), &none),
            Decision::Skip(_)
        ));
        assert!(matches!(decide(&pod(base), None, &none), Decision::Skip(_)));
        let opted_out = json!({"metadata": {"name": "a", "namespace": "shop", "labels": {"istio.io/dataplane-mode": "none"}}});
        assert!(matches!(
            decide(&pod(opted_out), Some(&ambient), &none),
            Decision::Skip(_)
        ));
        let opted_in = json!({"metadata": {"name": "a", "namespace": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}});
        assert_eq!(
            decide(&pod(opted_in), Some(&plain), &none),
            Decision::Enroll
        );
        let host = json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"hostNetwork": true, "containers": []}});
        assert_eq!(
            decide(&pod(host), Some(&ambient), &none),
            Decision::Skip("host-network pod")
        );
        let sidecar = json!({"metadata": {"name": "a", "namespace": "shop"}, "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}});
        assert_eq!(
            decide(&pod(sidecar), Some(&ambient), &none),
            Decision::Skip("pod runs an Istio sidecar")
        );
        let injected = json!({"metadata": {"name": "a", "namespace": "shop", "annotations": {"sidecar.istio.io/status": "{}"}}});
        assert!(matches!(
            decide(&pod(injected), Some(&ambient), &none),
            Decision::Skip(_)
        ));
        let system = json!({"metadata": {"name": "a", "namespace": "kube-system", "labels": {"istio.io/dataplane-mode": "ambient"}}});
        assert_eq!(
            decide(&pod(system), Some(&ambient), &none),
            Decision::Skip("namespace excluded from the mesh")
        );
    }
}
