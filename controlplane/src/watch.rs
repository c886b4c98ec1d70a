//! Keeps the published catalog in step with the local source directory: re-read and
//! re-translated whenever a file in it changes; a file or object that cannot be used is
//! logged and skipped, and everything else keeps flowing.

use crate::{
    catalog::Catalog,
    source,
    translate::{self, Mesh},
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the directory is checked for changes.
const POLL: Duration = Duration::from_millis(250);

/// Reads, translates and catalogs the directory once, logging what was skipped.
pub fn load(dir: &Path, mesh: &Mesh) -> Result<Catalog, std::io::Error> {
    let (snapshot, errors) = source::read_dir(dir)?;
    for e in &errors {
        warn!(file = %e.file.display(), kind = %e.kind, name = %e.name, reason = %e.reason, "object skipped");
    }
    let resources = translate::translate(&snapshot, mesh);
    for e in &resources.errors {
        warn!(kind = e.kind, namespace = %e.namespace, name = %e.name, reason = %e.reason, "object not translated");
    }
    Ok(Catalog::from_resources(&resources))
}

/// Publishes the directory's catalog now and after every change.
pub fn publish_dir(
    dir: PathBuf,
    mesh: Mesh,
) -> Result<watch::Receiver<Arc<Catalog>>, std::io::Error> {
    let first = load(&dir, &mesh)?;
    info!(dir = %dir.display(), addresses = first.types.values().map(|t| t.len()).sum::<usize>(), "source loaded");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut seen = fingerprint(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            let now = fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&dir, &mesh) {
                Ok(catalog) => {
                    if crate::catalog::publish(&tx, catalog) {
                        info!(dir = %dir.display(), "source changed; pushing");
                    }
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "source unreadable; keeping the last good state")
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Names, sizes and modification times of the directory's files: when it changes, someone
/// wrote there (cheaper than reading everything again).
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    out.sort();
    out
}
