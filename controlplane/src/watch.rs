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
/// The longest wait between retries while the directory cannot be listed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Translates and catalogs what `source` holds, logging what was not translated.
pub fn catalog(source: &DirSource, mesh: &Mesh) -> Catalog {
    let resources = translate::translate(&source.snapshot(), mesh);
    for e in &resources.errors {
        warn!(kind = e.kind, namespace = %e.namespace, name = %e.name, reason = %e.reason, "object not translated");
    }
    Catalog::from_resources(&resources)
}

/// Publishes the directory's catalog now and after every change. Fails only when the
/// directory cannot be listed at start.
pub async fn publish_dir(
    dir: PathBuf,
    mesh: Mesh,
) -> Result<watch::Receiver<Arc<Catalog>>, std::io::Error> {
    let (source, scanned) = DirSource::new(dir).scan_blocking().await;
    scanned?;
    let (mut source, first) = catalog_blocking(source, mesh.clone()).await;
    dir_source::log_loaded(&source, first.types.values().map(|t| t.len()).sum());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut wait = POLL;
        loop {
            tokio::time::sleep(wait).await;
            if tx.is_closed() {
                return;
            }
            let scanned;
            (source, scanned) = source.scan_blocking().await;
            match scanned {
                Ok(scan) if scan.changed => {
                    wait = POLL;
                    let catalog;
                    (source, catalog) = catalog_blocking(source, mesh.clone()).await;
                    if crate::catalog::publish(&tx, catalog) {
                        info!(dir = %source.dir().display(), "source changed; pushing");
                    }
                }
                Ok(_) => wait = POLL,
                Err(e) => {
                    if wait == POLL {
                        warn!(dir = %source.dir().display(), error = %e, "source directory unreadable; keeping the last good state");
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    Ok(rx)
}

/// [`catalog`] on the blocking pool (translation is CPU work that grows with the cluster).
async fn catalog_blocking(source: DirSource, mesh: Mesh) -> (DirSource, Catalog) {
    tokio::task::spawn_blocking(move || {
        let c = catalog(&source, &mesh);
        (source, c)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
