//! Kubernetes YAML as a user would `kubectl apply` it (multi-document files): the objects the
//! control plane uses, each invalid one reported with its file, line, kind, name and reason.
//! A file that is not YAML at all (a syntax error, nesting past the limit) is refused whole.
//! [`crate::dir_source`] reads directories of such files.

use crate::yaml_guard;
use amesh_policy::{
    crd::{AuthorizationPolicy, PeerAuthenticationResource},
    jwt::RequestAuthenticationResource,
};
use gateway_api::{
    experimental::{grpcroutes::GrpcRoute, httproutes::HttpRoute, tcproutes::TcpRoute},
    gatewayclasses::GatewayClass,
    gateways::Gateway,
};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One object that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind} {name}: {reason}{}", file.display(), at_line(*line))]
pub struct ObjectError {
    pub file: PathBuf,
    /// Where its document starts (1-based), when known.
    pub line: Option<usize>,
    pub kind: String,
    pub name: String,
    pub reason: String,
    /// Which object it was meant to be, when its kind and name could be read (so that its
    /// last good version can stand in for it).
    pub key: Option<ObjectKey>,
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (document at line {l})"))
        .unwrap_or_default()
}

/// Why a whole file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

/// What identifies an object: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One object the control plane reads.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    RequestAuthentication(Box<RequestAuthenticationResource>),
    PeerAuthentication(Box<PeerAuthenticationResource>),
    /// Gateway API objects (`gateway.networking.k8s.io`): waypoints are Gateways.
    Gateway(Box<Gateway>),
    GatewayClass(Box<GatewayClass>),
    /// Read with the Gateway API's experimental fields (`retry`), a superset of v1's.
    HttpRoute(Box<HttpRoute>),
    GrpcRoute(Box<GrpcRoute>),
    VirtualService(Box<crate::networking::VirtualService>),
    DestinationRule(Box<crate::networking::DestinationRule>),
    ServiceEntry(Box<crate::networking::ServiceEntry>),
    TcpRoute(Box<TcpRoute>),
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
    pub request_authentications: Vec<RequestAuthenticationResource>,
    pub peer_authentications: Vec<PeerAuthenticationResource>,
    pub gateways: Vec<Gateway>,
    pub gateway_classes: Vec<GatewayClass>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub virtual_services: Vec<crate::networking::VirtualService>,
    pub destination_rules: Vec<crate::networking::DestinationRule>,
    pub service_entries: Vec<crate::networking::ServiceEntry>,
    pub tcp_routes: Vec<TcpRoute>,
}

impl Snapshot {
    pub fn add(&mut self, object: Object) {
        match object {
            Object::Namespace(o) => self.namespaces.push(*o),
            Object::Pod(o) => self.pods.push(*o),
            Object::Service(o) => self.services.push(*o),
            Object::EndpointSlice(o) => self.endpoint_slices.push(*o),
            Object::AuthorizationPolicy(o) => self.authorization_policies.push(*o),
            Object::RequestAuthentication(o) => self.request_authentications.push(*o),
            Object::PeerAuthentication(o) => self.peer_authentications.push(*o),
            Object::Gateway(o) => self.gateways.push(*o),
            Object::GatewayClass(o) => self.gateway_classes.push(*o),
            Object::HttpRoute(o) => self.http_routes.push(*o),
            Object::GrpcRoute(o) => self.grpc_routes.push(*o),
            Object::VirtualService(o) => self.virtual_services.push(*o),
            Object::DestinationRule(o) => self.destination_rules.push(*o),
            Object::ServiceEntry(o) => self.service_entries.push(*o),
            Object::TcpRoute(o) => self.tcp_routes.push(*o),
        }
    }
}

/// The objects of one file that could be used, and the ones that could not.
#[derive(Debug, Default, Clone)]
pub struct ParsedFile {
    pub objects: Vec<(ObjectKey, Object)>,
    pub errors: Vec<ObjectError>,
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

/// Parses one (multi-document) YAML text. A syntax error anywhere refuses the whole file: what
/// follows it cannot be trusted, and the parser would report the same error forever.
pub fn parse_file(file: &Path, text: &str) -> Result<ParsedFile, FileError> {
    let file_error = |line, reason| FileError {
        file: file.into(),
        line,
        reason,
    };
    if let Err(e) = yaml_guard::check(text) {
        return Err(file_error(Some(e.line), e.to_string()));
    }
    let mut parsed = ParsedFile::default();
    let starts = document_lines(text);
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                let line = error_line(text, &e);
                let reason = format!("document #{}: {}", i + 1, strip_location(&e));
                return Err(file_error(line, reason));
            }
        };
        match to_object(value) {
            Ok(Some(o)) => parsed.objects.push(o),
            Ok(None) => {}
            Err(e) => parsed.errors.push(ObjectError {
                file: file.into(),
                line: starts.get(i).copied(),
                ..*e
            }),
        }
    }
    Ok(parsed)
}

/// The line (1-based) each document starts on: after each `---` marker, and at the top
/// unless the text opens with one.
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut seen_content = false;
    for (n, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ");
        if marker {
            // The document's first line is the one after its marker.
            starts.push(n + 2);
        } else if !seen_content && !line.trim().is_empty() && !line.starts_with('#') {
            if starts.is_empty() {
                starts.push(n + 1);
            }
            seen_content = true;
        }
        seen_content |= marker;
    }
    starts
}

/// The line a parse error is on. libyaml's reader errors (a control character) carry only a
/// byte position in their message, and no location.
fn error_line(text: &str, e: &serde_yaml::Error) -> Option<usize> {
    let message = e.to_string();
    let position = message.split_once(" at position ").and_then(|(_, rest)| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    let index = position.or_else(|| e.location().map(|l| l.index()))?;
    let before = &text.as_bytes()[..index.min(text.len())];
    Some(before.iter().filter(|b| **b == b'\n').count() + 1)
}

/// serde_yaml's message without its trailing "at line N column M" (the line is reported apart).
fn strip_location(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Adds the objects of one (multi-document) YAML text to `snapshot`; a file that cannot be
/// parsed at all is reported as one error.
pub fn read_documents(
    file: &Path,
    text: &str,
    snapshot: &mut Snapshot,
    errors: &mut Vec<ObjectError>,
) {
    match parse_file(file, text) {
        Ok(parsed) => {
            for (_, o) in parsed.objects {
                snapshot.add(o);
            }
            errors.extend(parsed.errors);
        }
        Err(e) => errors.push(ObjectError {
            file: e.file,
            line: e.line,
            kind: "file".into(),
            name: String::new(),
            reason: e.reason,
            key: None,
        }),
    }
}

/// The object a document holds: `None` for kinds the control plane does not read.
fn to_object(value: serde_yaml::Value) -> Result<Option<(ObjectKey, Object)>, Box<ObjectError>> {
    // YAML to JSON first, as kubectl does before the API server sees an object: map keys
    // become strings (`portLevelMtls: {9090: ...}` is written with an integer key).
    let value: serde_json::Value = serde_json::to_value(value).map_err(|e| {
        object_error(
            "object",
            "?",
            None,
            format!("not representable as JSON: {e}"),
        )
    })?;
    let meta: TypeMeta = serde_json::from_value(value.clone())
        .map_err(|e| object_error("object", "?", None, e.to_string()))?;
    let text = |field: &str| {
        meta.metadata
            .get(field)
            .and_then(|n| n.as_str())
            .map(str::to_string)
    };
    let name = text("name").unwrap_or_else(|| "(no name)".into());
    let key = ObjectKey {
        kind: meta.kind.clone(),
        namespace: text("namespace").unwrap_or_default(),
        name: name.clone(),
    };
    let err =
        |e: serde_json::Error| object_error(&meta.kind, &name, Some(key.clone()), e.to_string());
    let object = match (meta.api_version.as_str(), meta.kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(serde_json::from_value(value).map_err(err)?),
        ("v1", "Pod") => Object::Pod(serde_json::from_value(value).map_err(err)?),
        ("v1", "Service") => Object::Service(serde_json::from_value(value).map_err(err)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(serde_json::from_value(value).map_err(err)?)
        }
        ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
            Object::AuthorizationPolicy(serde_json::from_value(value).map_err(err)?)
        }
        ("security.istio.io/v1" | "security.istio.io/v1beta1", "RequestAuthentication") => {
            Object::RequestAuthentication(serde_json::from_value(value).map_err(err)?)
        }
        ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
            Object::PeerAuthentication(serde_json::from_value(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "Gateway") => {
            Object::Gateway(serde_json::from_value(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "GatewayClass") => {
            Object::GatewayClass(serde_json::from_value(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
            Object::HttpRoute(serde_json::from_value(value).map_err(err)?)
        }
        (
            "networking.istio.io/v1"
            | "networking.istio.io/v1beta1"
            | "networking.istio.io/v1alpha3",
            "VirtualService",
        ) => Object::VirtualService(serde_json::from_value(value).map_err(err)?),
        (
            "networking.istio.io/v1"
            | "networking.istio.io/v1beta1"
            | "networking.istio.io/v1alpha3",
            "DestinationRule",
        ) => Object::DestinationRule(serde_json::from_value(value).map_err(err)?),
        (
            "networking.istio.io/v1"
            | "networking.istio.io/v1beta1"
            | "networking.istio.io/v1alpha3",
            "ServiceEntry",
        ) => Object::ServiceEntry(serde_json::from_value(value).map_err(err)?),
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            Object::GrpcRoute(serde_json::from_value(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1alpha2", "TCPRoute") => {
            Object::TcpRoute(serde_json::from_value(value).map_err(err)?)
        }
        // Other kinds (Deployments, ConfigMaps...) are not the control plane's business.
        (_, kind) if !kind.is_empty() => return Ok(None),
        _ => {
            return Err(object_error(
                "object",
                &name,
                None,
                "no apiVersion/kind".into(),
            ));
        }
    };
    Ok(Some((key, object)))
}

fn object_error(
    kind: &str,
    name: &str,
    key: Option<ObjectKey>,
    reason: String,
) -> Box<ObjectError> {
    Box::new(ObjectError {
        file: PathBuf::new(),
        line: None,
        kind: kind.into(),
        name: name.into(),
        reason,
        key,
    })
}
