//! The Helm chart (`deploy/chart/amesh`) and its committed rendering
//! (`deploy/manifests/amesh.yaml`): rendered and linted by Helm's own engine (helm-python-sdk
//! in the project's venv, made by `cargo xtask setup`), no drift between the two, and the
//! security-relevant fields of every object as the design says: capabilities, host paths and
//! which container mounts each, tokens, probes, scheduling, and RBAC without wildcards.

use k8s_openapi::{
    Metadata,
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, PodSpec, Service, ServiceAccount, Volume, VolumeMount},
        rbac::v1::{
            ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::{Serialize, de::DeserializeOwned};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/amesh.yaml"
);
const RENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/render.py");
const NAMESPACE: &str = "istio-system";
const AGENT: &str = "amesh-node";
const ZTUNNEL: &str = "ztunnel";

// ---------------------------------------------------------------- rendering with Helm

/// The venv's Python, which has helm-python-sdk. Missing is a failure, never a skip.
fn python() -> PathBuf {
    let cache = match std::env::var_os("AMESH_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or AMESH_CACHE is set"))
            .join(".cache/amesh"),
    };
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`, which creates the venv with helm-python-sdk \
         (Helm's engine, to render and lint deploy/chart)",
        python.display()
    );
    python
}

/// Runs `deploy/render.py` with `args`; its stdout, or a panic with its stderr.
fn render_py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(RENDER)
        .args(args)
        .output()
        .expect("running deploy/render.py");
    assert!(
        out.status.success(),
        "deploy/render.py {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the rendering is UTF-8")
}

fn committed() -> String {
    std::fs::read_to_string(MANIFESTS).expect("deploy/manifests/amesh.yaml is committed")
}

/// A line diff (longest common subsequence), changed lines with two lines of context.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new(); // (sign, line in the committed file, text)
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|op| op.0 != ' ')
    };
    let mut text =
        String::from("--- deploy/manifests/amesh.yaml (committed)\n+++ the chart's rendering\n");
    let mut shown = 0;
    let mut last = None;
    for (k, (sign, line, body)) in ops.iter().enumerate() {
        if !near_change(k) {
            continue;
        }
        if last != Some(k.wrapping_sub(1)) {
            text.push_str(&format!("@@ near line {} @@\n", line + 1));
        }
        text.push_str(&format!("{sign}{body}\n"));
        last = Some(k);
        shown += 1;
        if shown == 120 {
            text.push_str("... (more differences)\n");
            break;
        }
    }
    text
}

#[test]
fn committed_manifests_match_the_chart() {
    let rendered = render_py(&[]);
    let committed = committed();
    assert!(
        rendered == committed,
        "deploy/manifests/amesh.yaml differs from what deploy/chart/amesh renders; regenerate \
         it with `cargo xtask render-manifests` and commit both:\n{}",
        diff(&committed, &rendered)
    );
}

#[test]
fn the_diff_names_what_changed() {
    let d = diff("a\nb\nc\nd\n", "a\nB\nc\nd\ne\n");
    assert!(d.contains("-b\n+B\n"), "{d}");
    assert!(d.contains("+e\n"), "{d}");
    assert!(!d.contains("-c") && !d.contains("+c"), "{d}");
}

#[test]
fn chart_passes_strict_lint() {
    render_py(&["--lint"]);
    render_py(&["--lint", "--set", "controlPlane.enabled=false"]);
}

#[test]
fn strict_lint_fails_on_a_warning() {
    // An invalid object name is a lint warning; --strict must turn it into a failure.
    let out = Command::new(python())
        .arg(RENDER)
        .args(["--lint", "--set", "node.serviceAccountName=Not_A_Name"])
        .output()
        .expect("running deploy/render.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lint passed:\n{stderr}");
    assert!(stderr.contains("naming requirements"), "{stderr}");
}

// ---------------------------------------------------------------- parsing into API types

/// Every kind the chart may produce, as the API's own types.
#[derive(Debug)]
enum Object {
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Service(Box<Service>),
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
}

/// Parses as `T`, and checks that `T` holds every field of the document: a misspelled or
/// misplaced field (which the API server would drop or refuse) fails here.
fn typed<T: DeserializeOwned + Serialize>(doc: &serde_json::Value, what: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its API type: {e}"));
    let again = serde_json::to_value(&object).expect("serialize");
    if let Some(lost) = lost(doc, &again, "") {
        panic!("{what}: {lost} is not a field of its API type (misspelled or misplaced?)");
    }
    object
}

/// The first path of `doc` that did not survive the round trip through the API type.
fn lost(doc: &serde_json::Value, again: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (doc, again) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => lost(v, w, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            (0..a.len()).find_map(|i| lost(&a[i], &b[i], &format!("{path}[{i}]")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path} (written {a}, read back as {b})")),
    }
}

fn parse(text: &str) -> Vec<Object> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let doc = serde_json::Value::deserialize(document).expect("every document is YAML");
        if doc.is_null() {
            continue; // comments only
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let what = format!("{kind} {}", doc["metadata"]["name"]);
        objects.push(match kind.as_str() {
            "ServiceAccount" => Object::ServiceAccount(typed(&doc, &what)),
            "ClusterRole" => Object::ClusterRole(typed(&doc, &what)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(&doc, &what)),
            "Role" => Object::Role(typed(&doc, &what)),
            "RoleBinding" => Object::RoleBinding(typed(&doc, &what)),
            "Service" => Object::Service(Box::new(typed(&doc, &what))),
            "DaemonSet" => Object::DaemonSet(Box::new(typed(&doc, &what))),
            "Deployment" => Object::Deployment(Box::new(typed(&doc, &what))),
            other => panic!("unexpected kind {other:?} ({what}); teach tests/tests/deploy.rs it"),
        });
    }
    objects
}

fn manifests() -> Vec<Object> {
    parse(&committed())
}

impl Object {
    fn daemonset(&self) -> Option<&DaemonSet> {
        match self {
            Object::DaemonSet(d) => Some(d),
            _ => None,
        }
    }
    fn deployment(&self) -> Option<&Deployment> {
        match self {
            Object::Deployment(d) => Some(d),
            _ => None,
        }
    }
    fn service(&self) -> Option<&Service> {
        match self {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }
    fn service_account(&self) -> Option<&ServiceAccount> {
        match self {
            Object::ServiceAccount(s) => Some(s),
            _ => None,
        }
    }
}

/// The objects `pick` selects, by name.
fn all<T: Metadata<Ty = ObjectMeta>>(
    objects: &[Object],
    pick: fn(&Object) -> Option<&T>,
) -> BTreeMap<String, &T> {
    let mut found = BTreeMap::new();
    for object in objects.iter().filter_map(pick) {
        let n = name(object.metadata()).to_string();
        assert!(
            found.insert(n.clone(), object).is_none(),
            "two objects named {n}"
        );
    }
    found
}

fn daemonsets(objects: &[Object]) -> BTreeMap<String, &DaemonSet> {
    all(objects, Object::daemonset)
}

fn deployments(objects: &[Object]) -> BTreeMap<String, &Deployment> {
    all(objects, Object::deployment)
}

fn services(objects: &[Object]) -> BTreeMap<String, &Service> {
    all(objects, Object::service)
}

fn service_accounts(objects: &[Object]) -> BTreeMap<String, &ServiceAccount> {
    all(objects, Object::service_account)
}

/// Roles of either scope, keyed `ClusterRole/<name>` or `Role/<name>`.
fn roles(objects: &[Object]) -> BTreeMap<String, &[PolicyRule]> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::ClusterRole(r) => {
                Some((format!("ClusterRole/{}", name(&r.metadata)), &r.rules))
            }
            Object::Role(r) => Some((format!("Role/{}", name(&r.metadata)), &r.rules)),
            _ => None,
        })
        .map(|(k, rules)| (k, rules.as_deref().unwrap_or_default()))
        .collect()
}

/// Bindings of either scope, keyed like [`roles`].
fn bindings(objects: &[Object]) -> BTreeMap<String, (&RoleRef, &[Subject])> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::ClusterRoleBinding(b) => Some((
                format!("ClusterRoleBinding/{}", name(&b.metadata)),
                &b.role_ref,
                &b.subjects,
            )),
            Object::RoleBinding(b) => Some((
                format!("RoleBinding/{}", name(&b.metadata)),
                &b.role_ref,
                &b.subjects,
            )),
            _ => None,
        })
        .map(|(k, r, s)| (k, (r, s.as_deref().unwrap_or_default())))
        .collect()
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn node_pod(objects: &[Object]) -> PodSpec {
    let ds = daemonsets(objects);
    let ds = ds.get("amesh-node").expect("DaemonSet amesh-node");
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name}"))
}

/// The value after `flag` in `c`'s args (exactly one occurrence).
fn flag<'a>(c: &'a Container, flag: &str) -> &'a str {
    let args = c.args.as_deref().unwrap_or_default();
    let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == flag).collect();
    assert_eq!(
        at.len(),
        1,
        "{}: {flag} given {} times in {args:?}",
        c.name,
        at.len()
    );
    args.get(at[0] + 1).map(String::as_str).unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn mounts(c: &Container) -> &[VolumeMount] {
    c.volume_mounts.as_deref().unwrap_or_default()
}

/// The mount `path` lies under in `c` (the longest such mount path), if any.
fn mount_of<'a>(c: &'a Container, path: &str) -> Option<&'a VolumeMount> {
    mounts(c)
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("volume {name}"))
}

/// The volume `c` reaches `path` through (the path must lie under one of its mounts).
fn volume_at<'a>(pod: &'a PodSpec, c: &Container, path: &str) -> &'a Volume {
    let m = mount_of(c, path).unwrap_or_else(|| panic!("{}: nothing mounted at {path}", c.name));
    volume(pod, &m.name)
}

fn env_field<'a>(c: &'a Container, var: &str) -> &'a str {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == var)
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
        .unwrap_or_else(|| panic!("{}: {var} from a fieldRef", c.name))
}

mod args;
mod control_plane;
mod node;
mod rbac;
