//! Keeps the published catalog in step with the local source directory: re-read and
//! re-translated whenever a file in it changes, on the blocking pool so that the CA and xDS
//! keep serving meanwhile; a file or object that cannot be used is reported and its last good
//! version stays (see [`amesh_kube::dir_source`]), and everything else keeps flowing.

use crate::{
    catalog::Catalog,
    translate::{self, Mesh},
};
use amesh_kube::dir_source::{self, DirSource};
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the directory is checked for changes.
const POLL: Duration = Duration::from_millis(250);

/// Translates and catalogs what `source` holds, logging what was not translated.
pub fn catalog(source: &DirSource, mesh: &Mesh) -> Catalog {
    let resources = translate::translate(&source.snapshot(), mesh);
    for e in &resources.errors {
        let (what, _) = e.what();
        warn!(kind = e.kind, namespace = %e.namespace, name = %e.name, reason = %e.reason, "{what}");
    }
    Catalog::from_resources(&resources)
}

/// Publishes the directory's catalog now and after every change (translated on the blocking
/// pool: it is CPU work that grows with the cluster). Fails only when the directory cannot be
/// listed at start.
pub async fn publish_dir(
    dir: PathBuf,
    mesh: Mesh,
) -> Result<watch::Receiver<Arc<Catalog>>, std::io::Error> {
    let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
    let mut first = true;
    // Translated again now and then with the directory unchanged too, so that JWKS the
    // control plane refreshes in the background reach the waypoints (an unchanged result
    // pushes nothing).
    dir_source::follow_refreshing(dir, POLL, Some(crate::jwks::RETRY), move |source| {
        let catalog = catalog(source, &mesh);
        let objects = catalog.types.values().map(|t| t.len()).sum();
        if crate::catalog::publish(&tx, catalog) && !first {
            info!(dir = %source.dir().display(), "source changed; pushing");
        }
        if std::mem::take(&mut first) {
            dir_source::log_loaded(source, objects);
        }
        !tx.is_closed()
    })
    .await?;
    Ok(rx)
}
