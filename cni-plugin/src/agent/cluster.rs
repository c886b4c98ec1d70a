//! What the agent knows of the cluster: every Namespace and the Pods scheduled on its node.
//! Two sources feed the same view (and so the same decisions): the Kubernetes API through
//! kube-rs reflectors, or a local directory of the same YAML objects the control plane reads.

use amesh_kube::{
    dir_source::{self, DirSource},
    driver::spawn_driver,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};
use tokio::sync::{Notify, watch};

/// How often the directory source looks for changes.
const DIR_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub namespaces: BTreeMap<String, Namespace>,
    /// This node's pods by (namespace, name).
    pub pods: BTreeMap<(String, String), Pod>,
}

impl ClusterView {
    fn build(
        namespaces: impl IntoIterator<Item = Namespace>,
        pods: impl IntoIterator<Item = Pod>,
        node: &str,
    ) -> Self {
        let namespaces = namespaces
            .into_iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n)))
            .collect();
        let pods = pods
            .into_iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| n == node)
            })
            .filter_map(|p| {
                let key = (
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    p.metadata.name.clone()?,
                );
                Some((key, p))
            })
            .collect();
        Self { namespaces, pods }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading the source directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for the first list of {kind}: {reason}")]
    InitialList { kind: &'static str, reason: String },
}

/// Where the view comes from.
#[derive(Clone)]
pub enum Source {
    Dir(PathBuf),
    Kube(Client),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            Source::Kube(_) => f.write_str("Kube"),
        }
    }
}

/// Starts the source; returns once the first complete view is known.
pub async fn start(
    source: Source,
    node: String,
) -> Result<watch::Receiver<ClusterView>, ClusterError> {
    match source {
        Source::Dir(dir) => start_dir(dir, node).await,
        Source::Kube(client) => start_kube(client, node).await,
    }
}

/// The view the directory holds now.
fn view_of(source: &DirSource, node: &str) -> ClusterView {
    let snapshot = source.snapshot();
    ClusterView::build(snapshot.namespaces, snapshot.pods, node)
}

/// Reads the directory on the blocking pool (only the files that changed are read again; a
/// file that cannot be used is reported and its last good version stays), then follows it.
async fn start_dir(
    dir: PathBuf,
    node: String,
) -> Result<watch::Receiver<ClusterView>, ClusterError> {
    let (tx, rx) = watch::channel(ClusterView::default());
    dir_source::follow(dir.clone(), DIR_POLL, move |source| {
        // Only a changed view wakes the agent.
        let view = view_of(source, &node);
        tx.send_if_modified(|old| {
            let changed = *old != view;
            if changed {
                *old = view;
            }
            changed
        });
        !tx.is_closed()
    })
    .await
    .map_err(|source| ClusterError::Dir { path: dir, source })?;
    Ok(rx)
}

async fn start_kube(
    client: Client,
    node: String,
) -> Result<watch::Receiver<ClusterView>, ClusterError> {
    let changed = Arc::new(Notify::new());
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    spawn_driver(
        reflector::reflector(
            ns_writer,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff(),
        changed.clone(),
        "Namespace".into(),
    );
    // Only this node's pods: the API server filters, as it does for the kubelet.
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    spawn_driver(
        reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client), on_node))
            .default_backoff(),
        changed.clone(),
        "Pod".into(),
    );
    let fail = |kind| {
        move |e: reflector::store::WriterDropped| ClusterError::InitialList {
            kind,
            reason: e.to_string(),
        }
    };
    namespaces
        .wait_until_ready()
        .await
        .map_err(fail("Namespace"))?;
    pods.wait_until_ready().await.map_err(fail("Pod"))?;
    let view = move |ns: &reflector::Store<Namespace>, p: &reflector::Store<Pod>| {
        ClusterView::build(
            ns.state().iter().map(|n| (**n).clone()),
            p.state().iter().map(|n| (**n).clone()),
            &node,
        )
    };
    let (tx, rx) = watch::channel(view(&namespaces, &pods));
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            let next = view(&namespaces, &pods);
            tx.send_if_modified(|old| {
                let differs = *old != next;
                if differs {
                    *old = next;
                }
                differs
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
