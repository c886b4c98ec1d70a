//! The local source: a directory of Kubernetes YAML (multi-document files, as a user would
//! `kubectl apply` them). Objects the control plane uses are kept; each invalid one is
//! reported with its file, kind, name and reason, and skipped; the rest still load.

use amesh_policy::crd::{AuthorizationPolicy, PeerAuthenticationResource};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One object that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind} {name}: {reason}", file.display())]
pub struct ObjectError {
    pub file: PathBuf,
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// Everything the translation reads.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Endpoints of services without a selector (the others come from their pods).
    pub endpoint_slices: Vec<EndpointSlice>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthenticationResource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

/// Reads every `*.yaml` / `*.yml` file in `dir` (sorted, so the result is stable).
pub fn read_dir(dir: &Path) -> Result<(Snapshot, Vec<ObjectError>), std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        read_documents(&file, &text, &mut snapshot, &mut errors);
    }
    Ok((snapshot, errors))
}

/// Adds the objects of one (multi-document) YAML text.
pub fn read_documents(
    file: &Path,
    text: &str,
    snapshot: &mut Snapshot,
    errors: &mut Vec<ObjectError>,
) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                let err = ObjectError {
                    file: file.into(),
                    kind: "document".into(),
                    name: format!("#{}", i + 1),
                    reason: e.to_string(),
                };
                errors.push(err);
                continue;
            }
        };
        if let Err(e) = add_object(value, snapshot) {
            errors.push(ObjectError {
                file: file.into(),
                ..e
            });
        }
    }
}

fn add_object(value: serde_yaml::Value, snapshot: &mut Snapshot) -> Result<(), ObjectError> {
    // YAML to JSON first, as kubectl does before the API server sees an object: map keys
    // become strings (`portLevelMtls: {9090: ...}` is written with an integer key).
    let value: serde_json::Value = serde_json::to_value(value)
        .map_err(|e| object_error("object", "?", format!("not representable as JSON: {e}")))?;
    let meta: TypeMeta = serde_json::from_value(value.clone())
        .map_err(|e| object_error("object", "?", e.to_string()))?;
    let name = meta
        .metadata
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("(no name)")
        .to_string();
    let err = |e: serde_json::Error| object_error(&meta.kind, &name, e.to_string());
    match (meta.api_version.as_str(), meta.kind.as_str()) {
        ("v1", "Namespace") => snapshot
            .namespaces
            .push(serde_json::from_value(value).map_err(err)?),
        ("v1", "Pod") => snapshot
            .pods
            .push(serde_json::from_value(value).map_err(err)?),
        ("v1", "Service") => snapshot
            .services
            .push(serde_json::from_value(value).map_err(err)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => snapshot
            .endpoint_slices
            .push(serde_json::from_value(value).map_err(err)?),
        ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
            snapshot
                .authorization_policies
                .push(serde_json::from_value(value).map_err(err)?);
        }
        ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
            snapshot
                .peer_authentications
                .push(serde_json::from_value(value).map_err(err)?);
        }
        // Other kinds (Deployments, ConfigMaps...) are not the control plane's business.
        (_, kind) if !kind.is_empty() => {}
        _ => return Err(object_error("object", &name, "no apiVersion/kind".into())),
    }
    Ok(())
}

fn object_error(kind: &str, name: &str, reason: String) -> ObjectError {
    ObjectError {
        file: PathBuf::new(),
        kind: kind.into(),
        name: name.into(),
        reason,
    }
}
