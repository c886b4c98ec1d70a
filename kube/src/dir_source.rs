//! A directory of Kubernetes YAML as a source: every `*.yaml` / `*.yml` file in it (sorted by
//! name; dot files are editors' and are skipped). Each file is read again only when it
//! changed, and on its own: a file that cannot be used (not a regular file, too large, not
//! UTF-8, not YAML) is reported once per change with its name, line and reason, and its last
//! good version stays; an object that cannot be used keeps its last good version from the same
//! file. So a typo never removes policies that were in force, and never stops the rest of the
//! directory from applying. Scans do blocking file I/O and parsing: run them on a blocking
//! thread; [`follow`] does, and follows the directory.

use crate::source::{self, FileError, Object, ObjectKey, ParsedFile, Snapshot};
use amesh_ratelimit::Throttle;
use amesh_sys::file::{ReadFileError, Stamp, read_regular};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};
use tracing::{info, warn};

/// Report lines: a burst of this many, then one every [`REFILL`].
const BURST: u32 = 20;
const REFILL: Duration = Duration::from_secs(3);

/// Largest file read (a Kubernetes object is at most 1.5 MiB; a file may hold several).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

#[derive(Debug, Default)]
struct FileState {
    /// `None` until the file was first examined.
    stamp: Option<Stamp>,
    /// The objects of its last good version (empty if it never had one).
    objects: Vec<(ObjectKey, Object)>,
}

/// What a scan found wrong, to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The whole file was refused; `kept` says whether a last good version stands in for it.
    File { error: FileError, kept: bool },
    /// One object was refused; `kept`: its last good version stands in for it.
    Object {
        error: source::ObjectError,
        kept: bool,
    },
}

/// The outcome of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether any file's objects changed (the snapshot must be rebuilt).
    pub changed: bool,
    pub problems: Vec<Problem>,
}

/// The directory and what each of its files last held.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    reports: Throttle,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            reports: Throttle::with_burst(BURST, REFILL),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks at every file, reading the changed ones. Fails only when the directory itself
    /// cannot be listed (then nothing changes).
    pub fn scan(&mut self) -> Result<Scan, std::io::Error> {
        let listed = list(&self.dir)?;
        let mut scan = Scan::default();
        let before = self.files.len();
        self.files.retain(|p, _| listed.contains(p));
        scan.changed |= self.files.len() != before;
        for path in listed {
            let state = self.files.entry(path.clone()).or_default();
            scan_file(&path, state, &mut scan);
        }
        Ok(scan)
    }

    /// Everything the directory holds now, in file order.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for state in self.files.values() {
            for (_, o) in &state.objects {
                snapshot.add(o.clone());
            }
        }
        snapshot
    }

    /// Logs `problems`, at most a burst of them at a time: a writer churning bad files cannot
    /// grow the log faster than the limiter allows.
    pub fn report(&mut self, problems: &[Problem]) {
        for p in problems {
            if let Some(suppressed) = self.reports.allow() {
                if suppressed > 0 {
                    warn!(dir = %self.dir.display(), suppressed, "more source problems were not logged");
                }
                log_problem(p);
            }
        }
    }
}

fn log_problem(p: &Problem) {
    match p {
        Problem::File { error, kept } => {
            let line = error.line.unwrap_or(0);
            let file = error.file.display();
            let reason = &error.reason;
            if *kept {
                warn!(%file, line, %reason, "file skipped; its last good version stays")
            } else {
                warn!(%file, line, %reason, "file skipped")
            }
        }
        Problem::Object { error, kept } => {
            let (file, line) = (error.file.display(), error.line.unwrap_or(0));
            let (kind, name, reason) = (&error.kind, &error.name, &error.reason);
            if *kept {
                warn!(%file, line, %kind, %name, %reason, "object skipped; its last good version stays")
            } else {
                warn!(%file, line, %kind, %name, %reason, "object skipped")
            }
        }
    }
}

/// The candidate files: `*.yaml` / `*.yml`, not dot files, sorted.
fn list(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads `path` again if it changed since `state` was taken, updating `state` and `scan`.
fn scan_file(path: &Path, state: &mut FileState, scan: &mut Scan) {
    // `metadata` follows links (ConfigMap mounts) and never blocks on what it finds; a
    // dangling link is stamped by the link itself, so it too is reported once.
    let Some(stamp) = std::fs::metadata(path)
        .or_else(|_| std::fs::symlink_metadata(path))
        .ok()
        .map(|m| Stamp::of(&m))
    else {
        // Gone between the listing and now: the next scan drops it.
        return;
    };
    if state.stamp == Some(stamp) {
        return;
    }
    state.stamp = Some(stamp);
    let kept = !state.objects.is_empty();
    match read_file(path) {
        Ok(parsed) => {
            let (objects, problems) = merge(parsed, &state.objects);
            state.objects = objects;
            scan.changed = true;
            scan.problems.extend(problems);
        }
        Err(error) => scan.problems.push(Problem::File { error, kept }),
    }
}

/// Reads and parses one file.
fn read_file(path: &Path) -> Result<ParsedFile, FileError> {
    let file_error = |reason: String| FileError {
        file: path.into(),
        line: None,
        reason,
    };
    let bytes = read_regular(path, MAX_FILE_BYTES).map_err(|e| {
        file_error(match e {
            ReadFileError::NotRegular { kind, .. } => {
                format!("is a {kind}, not a regular file; only regular files are read")
            }
            ReadFileError::TooLarge { limit, .. } => format!("larger than {limit} bytes"),
            ReadFileError::NotFound { .. } => "vanished while being read".into(),
            ReadFileError::Io { source, .. } => format!("cannot be read: {source}"),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        FileError {
            file: path.into(),
            line: Some(line),
            reason: format!("not UTF-8 (byte {at})"),
        }
    })?;
    source::parse_file(path, &text)
}

/// The file's new objects, with the last good version standing in for each object that is
/// now invalid but was read before.
fn merge(
    parsed: ParsedFile,
    old: &[(ObjectKey, Object)],
) -> (Vec<(ObjectKey, Object)>, Vec<Problem>) {
    let mut objects = parsed.objects;
    let mut problems = Vec::new();
    for error in parsed.errors {
        let previous = error
            .key
            .as_ref()
            .and_then(|k| old.iter().find(|(ok, _)| ok == k));
        if let Some(p) = previous {
            objects.push(p.clone());
        }
        problems.push(Problem::Object {
            error,
            kept: previous.is_some(),
        });
    }
    (objects, problems)
}

/// The longest wait between scans while the directory cannot be listed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Scans `dir` now (failing only if it cannot be listed) and then every `poll`, each scan on
/// the blocking pool. `on_change` runs there too, with the first contents and after every
/// change; it returns `false` to stop following (its subscribers are gone). While the
/// directory cannot be listed, scans back off up to 10 s and the last contents stay.
pub async fn follow<F>(dir: PathBuf, poll: Duration, on_change: F) -> Result<(), std::io::Error>
where
    F: FnMut(&DirSource) -> bool + Send + 'static,
{
    follow_refreshing(dir, poll, None, on_change).await
}

/// [`follow`], with `on_change` also run when `refresh` has passed since it last ran, the
/// directory unchanged: for what a translation reads besides the directory (JWKS fetched
/// over the network).
pub async fn follow_refreshing<F>(
    dir: PathBuf,
    poll: Duration,
    refresh: Option<Duration>,
    on_change: F,
) -> Result<(), std::io::Error>
where
    F: FnMut(&DirSource) -> bool + Send + 'static,
{
    let follower = Follower {
        source: DirSource::new(dir),
        on_change,
        refresh,
        last_run: std::time::Instant::now(),
    };
    let (mut follower, first) = blocking(follower, |f| f.step(true)).await;
    if !first? {
        return Ok(());
    }
    tokio::spawn(async move {
        let mut wait = poll;
        loop {
            tokio::time::sleep(wait).await;
            let step;
            (follower, step) = blocking(follower, |f| f.step(false)).await;
            match step {
                Ok(true) => wait = poll,
                Ok(false) => return,
                Err(e) => {
                    if wait == poll {
                        warn!(dir = %follower.source.dir().display(), error = %e, "source directory unreadable; keeping the last good state");
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    Ok(())
}

/// A directory and what to do with its contents.
struct Follower<F> {
    source: DirSource,
    on_change: F,
    refresh: Option<Duration>,
    last_run: std::time::Instant,
}

impl<F: FnMut(&DirSource) -> bool> Follower<F> {
    /// One scan, reported; `on_change` on the `first` and on every changed one. `Ok(false)`:
    /// stop following.
    fn step(&mut self, first: bool) -> Result<bool, std::io::Error> {
        let scan = self.source.scan()?;
        self.source.report(&scan.problems);
        let due = self
            .refresh
            .is_some_and(|every| self.last_run.elapsed() >= every);
        Ok(if first || scan.changed || due {
            self.last_run = std::time::Instant::now();
            (self.on_change)(&self.source)
        } else {
            true
        })
    }
}

/// Runs `f` on `t` on the blocking pool and gives `t` back.
async fn blocking<T, R>(mut t: T, f: impl FnOnce(&mut T) -> R + Send + 'static) -> (T, R)
where
    T: Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let r = f(&mut t);
        (t, r)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Logs that the directory was loaded.
pub fn log_loaded(source: &DirSource, objects: usize) {
    info!(dir = %source.dir().display(), files = source.files.len(), objects, "source loaded");
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

#[cfg(test)]
#[path = "dir_source_tests.rs"]
mod tests;
