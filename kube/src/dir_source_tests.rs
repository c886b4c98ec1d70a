use super::*;
use std::{sync::mpsc, time::Duration};

const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n";
const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("amesh-dirsrc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        // Through a rename, as editors and kubectl-like tools write: a new inode every time.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Scans on another thread, failing (not hanging) if the scan does not finish.
fn scan(source: DirSource) -> (DirSource, Scan) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut source = source;
        let scan = source.scan().expect("the directory lists");
        let _ = tx.send((source, scan));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a scan finishes (it looped or blocked)")
}

fn policies(s: &DirSource) -> Vec<String> {
    s.snapshot()
        .authorization_policies
        .iter()
        .map(|p| p.metadata.name.clone())
        .collect()
}

fn file_problems(scan: &Scan) -> Vec<(&Path, Option<usize>, &str, bool)> {
    scan.problems
        .iter()
        .filter_map(|p| match p {
            Problem::File { error, kept } => Some((
                error.file.as_path(),
                error.line,
                error.reason.as_str(),
                *kept,
            )),
            Problem::Object { .. } => None,
        })
        .collect()
}

#[test]
fn a_file_that_is_not_yaml_is_reported_once_and_the_rest_applies() {
    let cases: [(&str, &[u8], usize); 4] = [
        ("open-flow", b"a: [", 1),
        ("tab", b"a:\n\tb: 1\n", 2),
        ("braces", b"{{{{", 1),
        ("nul", b"a: b\nc: \0\n", 2),
    ];
    for (name, text, line) in cases {
        let dir = Scratch::new(name);
        dir.write("good.yaml", format!("{NAMESPACE}---\n{DENY}"));
        let bad = dir.write("bad.yaml", text);
        let (source, first) = scan(DirSource::new(&dir.0));
        let problems = file_problems(&first);
        assert_eq!(problems.len(), 1, "{name}: {:?}", first.problems);
        let (file, at, reason, kept) = problems[0];
        assert_eq!(file, bad.as_path(), "{name}");
        assert_eq!(at, Some(line), "{name}: {reason}");
        assert!(!kept, "{name}: nothing was read from it before");
        assert!(reason.starts_with("document #1: "), "{name}: {reason}");
        assert_eq!(policies(&source), ["deny-all"], "{name}");
        assert_eq!(source.snapshot().namespaces.len(), 1, "{name}");

        // Unchanged, it is not read (nor reported) again; a new good file still applies.
        let (source, again) = scan(source);
        assert!(
            again.problems.is_empty() && !again.changed,
            "{name}: {again:?}"
        );
        dir.write("more.yaml", DENY.replace("deny-all", "deny-more"));
        let (source, more) = scan(source);
        assert!(more.changed && more.problems.is_empty(), "{name}: {more:?}");
        assert_eq!(policies(&source), ["deny-all", "deny-more"], "{name}");
    }
}

#[test]
fn a_broken_edit_keeps_the_last_good_version_of_the_file() {
    let dir = Scratch::new("edit");
    dir.write("policy.yaml", DENY);
    let (source, _) = scan(DirSource::new(&dir.0));
    assert_eq!(policies(&source), ["deny-all"]);

    // A typo must not lift the DENY policy that was in force.
    dir.write("policy.yaml", DENY.replace("rules: [{}]}", "rules: [{}]"));
    let (source, broken) = scan(source);
    let problems = file_problems(&broken);
    assert_eq!(problems.len(), 1, "{:?}", broken.problems);
    assert!(problems[0].3, "reported as kept: {:?}", problems[0]);
    assert!(!broken.changed);
    assert_eq!(policies(&source), ["deny-all"]);

    // Fixed, the new version applies.
    dir.write("policy.yaml", DENY.replace("deny-all", "deny-fixed"));
    let (source, fixed) = scan(source);
    assert!(fixed.changed && fixed.problems.is_empty(), "{fixed:?}");
    assert_eq!(policies(&source), ["deny-fixed"]);

    // Removed, its objects go.
    std::fs::remove_file(dir.0.join("policy.yaml")).unwrap();
    let (source, removed) = scan(source);
    assert!(removed.changed);
    assert!(policies(&source).is_empty());
}

#[test]
fn an_invalid_object_keeps_its_last_good_version_and_its_siblings_apply() {
    let dir = Scratch::new("object");
    dir.write("p.yaml", format!("{NAMESPACE}---\n{DENY}"));
    let (source, _) = scan(DirSource::new(&dir.0));
    let broken = DENY.replace("spec: {action: DENY, rules: [{}]}", "spec: 5");
    let extra = DENY.replace("deny-all", "deny-new");
    dir.write("p.yaml", format!("{NAMESPACE}---\n{broken}---\n{extra}"));
    let (source, scanned) = scan(source);
    let [Problem::Object { error, kept }] = &scanned.problems[..] else {
        panic!("one object problem: {:?}", scanned.problems);
    };
    assert!(*kept);
    assert_eq!(
        (error.kind.as_str(), error.name.as_str()),
        ("AuthorizationPolicy", "deny-all")
    );
    assert_eq!(error.line, Some(5), "{error}");
    let mut names = policies(&source);
    names.sort();
    assert_eq!(names, ["deny-all", "deny-new"]);
}

#[test]
fn a_file_that_is_not_utf8_is_named_with_its_line_and_skipped() {
    let dir = Scratch::new("utf8");
    dir.write("good.yaml", DENY);
    let bad = dir.write("latin1.yaml", b"a: 1\nb: caf\xe9\n");
    let (source, scanned) = scan(DirSource::new(&dir.0));
    let problems = file_problems(&scanned);
    assert_eq!(problems.len(), 1, "{:?}", scanned.problems);
    assert_eq!((problems[0].0, problems[0].1), (bad.as_path(), Some(2)));
    assert!(problems[0].2.starts_with("not UTF-8"), "{}", problems[0].2);
    assert_eq!(policies(&source), ["deny-all"]);
}

#[test]
fn a_fifo_is_skipped_without_blocking_and_its_removal_changes_nothing() {
    let dir = Scratch::new("fifo");
    dir.write("good.yaml", DENY);
    let fifo = dir.0.join("pipe.yaml");
    mkfifo(&fifo);
    // No writer ever opens it: a blocking read would never return.
    let (source, scanned) = scan(DirSource::new(&dir.0));
    let problems = file_problems(&scanned);
    assert_eq!(problems.len(), 1, "{:?}", scanned.problems);
    assert!(
        problems[0].2.contains("is a FIFO, not a regular file"),
        "{}",
        problems[0].2
    );
    assert_eq!(policies(&source), ["deny-all"]);
    std::fs::remove_file(&fifo).unwrap();
    dir.write("more.yaml", DENY.replace("deny-all", "deny-more"));
    let (source, _) = scan(source);
    assert_eq!(policies(&source), ["deny-all", "deny-more"]);
}

/// This crate forbids `unsafe`, so the FIFO is made by coreutils' `mkfifo`.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn deep_nesting_and_oversized_files_are_refused_with_a_reason() {
    let dir = Scratch::new("limits");
    dir.write("good.yaml", DENY);
    dir.write("deep.yaml", format!("a: 1\nb: {}\n", "{a: ".repeat(25_000)));
    dir.write("huge.yaml", vec![b'#'; MAX_FILE_BYTES as usize + 1]);
    let (source, scanned) = scan(DirSource::new(&dir.0));
    let mut problems = file_problems(&scanned);
    problems.sort();
    assert_eq!(problems.len(), 2, "{:?}", scanned.problems);
    assert!(problems[0].0.ends_with("deep.yaml"));
    assert_eq!(problems[0].1, Some(2));
    assert!(
        problems[0].2.contains("nested deeper than 100"),
        "{}",
        problems[0].2
    );
    assert!(problems[1].0.ends_with("huge.yaml"));
    assert!(problems[1].2.contains("larger than"), "{}", problems[1].2);
    assert_eq!(policies(&source), ["deny-all"]);
}

#[test]
fn only_yaml_files_are_read_in_name_order_and_dot_files_are_skipped() {
    let dir = Scratch::new("order");
    dir.write("b.yaml", DENY.replace("deny-all", "b"));
    dir.write("a.yml", DENY.replace("deny-all", "a"));
    dir.write("notes.txt", "not yaml: [");
    dir.write(".#a.yaml", "swap: [");
    std::fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    let (source, scanned) = scan(DirSource::new(&dir.0));
    assert_eq!(policies(&source), ["a", "b"]);
    // The directory named like a file is reported, not read.
    let problems = file_problems(&scanned);
    assert_eq!(problems.len(), 1, "{:?}", scanned.problems);
    assert!(
        problems[0].2.contains("is a directory"),
        "{}",
        problems[0].2
    );
}

#[test]
fn a_missing_directory_is_an_error_and_changes_nothing() {
    let dir = Scratch::new("gone");
    dir.write("p.yaml", DENY);
    let mut source = DirSource::new(&dir.0);
    source.scan().unwrap();
    std::fs::remove_dir_all(&dir.0).unwrap();
    assert!(source.scan().is_err());
    assert_eq!(policies(&source), ["deny-all"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshing_follower_runs_again_with_the_directory_unchanged() {
    let dir = Scratch::new("refresh");
    dir.write("ns.yaml", NAMESPACE);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    follow_refreshing(
        dir.0.clone(),
        Duration::from_millis(10),
        Some(Duration::from_millis(50)),
        move |_| tx.send(()).is_ok(),
    )
    .await
    .expect("the directory lists");
    // The first run, then a refresh with nothing changed (a plain follower runs once only,
    // which the other tests see).
    for run in ["first", "refresh"] {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {run} run within 5 s"));
    }
}
