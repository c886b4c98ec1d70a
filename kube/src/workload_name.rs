//! The names istiod gives a pod for telemetry: the workload that owns it (a Deployment's name
//! rather than the pod's), that workload's kind, and its canonical service and revision. Istio's
//! dashboards group by these, so amesh derives them the same way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// `service.istio.io/canonical-name`.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// `service.istio.io/canonical-revision`.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// The label a Deployment's ReplicaSet puts on its pods.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The kinds Istio's `Workload.workload_type` distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    CronJob,
    Job,
    Pod,
}

/// A pod's telemetry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadName {
    pub name: String,
    pub kind: WorkloadKind,
    pub canonical_name: String,
    pub canonical_revision: String,
}

/// The owning workload of a pod, as istiod finds it from the pod alone (it does not fetch the
/// owners): a ReplicaSet whose pods carry `pod-template-hash` belongs to the Deployment named by
/// the ReplicaSet's name without `-<hash>`; a Job named `<cronjob>-<8 to 10 digits>` (the
/// scheduled time CronJobs append) belongs to that
/// CronJob; any other controller owner names the workload itself; a pod with no controller is
/// its own workload.
fn owner(meta: &ObjectMeta) -> (String, WorkloadKind) {
    let pod_name = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.as_ref();
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(o) = controller else {
        return (pod_name, WorkloadKind::Pod);
    };
    match o.kind.as_str() {
        "ReplicaSet" => {
            let hash = labels.and_then(|l| l.get(POD_TEMPLATE_HASH));
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => (deployment.to_string(), WorkloadKind::Deployment),
                // A bare ReplicaSet: Istio reports it under the deployment kind too.
                None => (o.name.clone(), WorkloadKind::Deployment),
            }
        }
        "Job" => match o.name.rsplit_once('-') {
            Some((cronjob, stamp))
                if !cronjob.is_empty()
                    && (8..=10).contains(&stamp.len())
                    && stamp.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (cronjob.to_string(), WorkloadKind::CronJob)
            }
            _ => (o.name.clone(), WorkloadKind::Job),
        },
        // StatefulSet, DaemonSet, ...: the owner's name, which Istio sends as a deployment.
        _ => (o.name.clone(), WorkloadKind::Deployment),
    }
}

/// The first of `keys` present (and non-empty) in `labels`.
fn first_label(labels: &BTreeMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| labels.get(*k))
        .find(|v| !v.is_empty())
        .cloned()
}

/// A pod's telemetry names from its metadata.
pub fn of_pod(meta: &ObjectMeta) -> WorkloadName {
    let (name, kind) = owner(meta);
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let canonical_name = first_label(labels, &[CANONICAL_NAME, "app.kubernetes.io/name", "app"])
        .unwrap_or_else(|| name.clone());
    let canonical_revision = first_label(
        labels,
        &[CANONICAL_REVISION, "app.kubernetes.io/version", "version"],
    )
    .unwrap_or_else(|| "latest".to_string());
    WorkloadName {
        name,
        kind,
        canonical_name,
        canonical_revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(name: &str, labels: &[(&str, &str)], owner: Option<(&str, &str, bool)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|(kind, name, controller)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(controller),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn owners_name_the_workload_as_istiod_does() {
        let cases = [
            (
                pod(
                    "cart-7d9f8-abcde",
                    &[("pod-template-hash", "7d9f8")],
                    Some(("ReplicaSet", "cart-7d9f8", true)),
                ),
                "cart",
                WorkloadKind::Deployment,
            ),
            (
                pod("rs-x1", &[], Some(("ReplicaSet", "rs", true))),
                "rs",
                WorkloadKind::Deployment,
            ),
            (
                pod(
                    "backup-29001234-q",
                    &[],
                    Some(("Job", "backup-29001234", true)),
                ),
                "backup",
                WorkloadKind::CronJob,
            ),
            (
                pod("run-42-q", &[], Some(("Job", "run-42", true))),
                "run-42",
                WorkloadKind::Job,
            ),
            (
                pod("migrate-q", &[], Some(("Job", "migrate", true))),
                "migrate",
                WorkloadKind::Job,
            ),
            (
                pod("db-0", &[], Some(("StatefulSet", "db", true))),
                "db",
                WorkloadKind::Deployment,
            ),
            (
                pod("loner", &[], Some(("ReplicaSet", "not-mine", false))),
                "loner",
                WorkloadKind::Pod,
            ),
            (pod("bare", &[], None), "bare", WorkloadKind::Pod),
        ];
        for (meta, name, kind) in cases {
            let w = of_pod(&meta);
            assert_eq!((w.name.as_str(), w.kind), (name, kind), "{:?}", meta.name);
        }
    }

    #[test]
    fn canonical_labels_in_istios_order_with_defaults() {
        let w = of_pod(&pod(
            "p",
            &[
                ("app", "a"),
                ("app.kubernetes.io/name", "k"),
                ("version", "v1"),
                ("app.kubernetes.io/version", "kv"),
            ],
            None,
        ));
        assert_eq!(
            (w.canonical_name.as_str(), w.canonical_revision.as_str()),
            ("k", "kv")
        );
        let w = of_pod(&pod(
            "p",
            &[
                (CANONICAL_NAME, "c"),
                (CANONICAL_REVISION, "r"),
                ("app", "a"),
                ("version", "v1"),
            ],
            None,
        ));
        assert_eq!(
            (w.canonical_name.as_str(), w.canonical_revision.as_str()),
            ("c", "r")
        );
        let w = of_pod(&pod(
            "cart-1-x",
            &[("app", ""), ("pod-template-hash", "1")],
            Some(("ReplicaSet", "cart-1", true)),
        ));
        assert_eq!(
            (w.canonical_name.as_str(), w.canonical_revision.as_str()),
            ("cart", "latest"),
            "no label: the workload's name and `latest`"
        );
    }
}
