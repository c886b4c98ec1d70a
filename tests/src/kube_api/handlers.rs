//! The emulated API server's answers: create, get, list, merge patch (also on `/status`),
//! TokenReview, and the field selectors it supports. Watches are in [`super::watch`].

use super::{
    Shared, collection_of,
    encoding::{fields_match, merge_patch},
    lock, put, put_in,
    watch::WatchBody,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A request as the handlers see it: method, path, decoded query, content type, body.
#[derive(Debug)]
pub(super) struct Request {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// An answer: a JSON object with its status code, or a watch's event stream.
#[derive(Debug)]
pub(super) enum Reply {
    Json(u16, Value),
    Watch(WatchBody),
}

/// A POST to a namespaced collection (e.g. events): stored, watchable, listed.
pub(super) fn create(shared: &Shared, request: &Request) -> Reply {
    let (collection, namespace) = route(&request.path);
    let Ok(mut object) = serde_json::from_slice::<Value>(&request.body) else {
        return Reply::Json(400, status(400, "BadRequest", "the body is not JSON"));
    };
    if let Some(ns) = &namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let exists = {
        let store = lock(shared);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        store.objects.contains_key(&(
            collection.clone(),
            namespace.clone().unwrap_or_default(),
            name.to_string(),
        ))
    };
    if exists {
        return Reply::Json(
            409,
            status(409, "AlreadyExists", "the object already exists"),
        );
    }
    if collection_of(&object).ok().as_deref() != Some(collection.as_str()) {
        return Reply::Json(
            400,
            status(
                400,
                "BadRequest",
                "the object's kind does not match the path",
            ),
        );
    }
    match put(shared, object) {
        Ok(stored) => Reply::Json(201, stored),
        Err(e) => Reply::Json(400, status(400, "BadRequest", &e)),
    }
}

/// TokenReview as the API server answers it: authenticated with the user and the token's
/// audiences, or not with an error (unknown, expired, or no audience in common).
pub(super) fn token_review(shared: &Shared, request: &Request) -> Reply {
    let Ok(review) = serde_json::from_slice::<Value>(&request.body) else {
        return Reply::Json(400, status(400, "BadRequest", "the body is not JSON"));
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let info = shared
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(token)
        .cloned();
    let result = match info {
        None => Err("invalid bearer token".to_string()),
        Some(i) if i.expired => Err("invalid bearer token, token has expired".to_string()),
        Some(i) if !wanted.is_empty() && !wanted.iter().any(|a| i.audiences.contains(a)) => {
            Err(format!(
                "token audiences {:?} is invalid for the target audiences {wanted:?}",
                i.audiences
            ))
        }
        Some(i) => Ok(i),
    };
    let status_body = match result {
        Ok(i) => {
            let mut extra = serde_json::Map::new();
            if let Some(p) = i.pod_name {
                extra.insert("authentication.kubernetes.io/pod-name".into(), json!([p]));
            }
            if let Some(n) = i.node_name {
                extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
            }
            let audiences: Vec<&String> = if wanted.is_empty() {
                i.audiences.iter().collect()
            } else {
                wanted.iter().filter(|a| i.audiences.contains(a)).collect()
            };
            json!({"authenticated": true, "audiences": audiences,
                   "user": {"username": i.username, "extra": extra}})
        }
        Err(error) => json!({"authenticated": false, "error": error}),
    };
    let body = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                      "metadata": {}, "spec": review["spec"], "status": status_body});
    Reply::Json(201, body)
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `/api/v1/pods` or `/api/v1/namespaces/<ns>/pods` → (collection, namespace filter).
pub(super) fn route(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // ["", "api", "v1", "namespaces", ns, plural] or ["", "apis", g, v, "namespaces", ns, plural]
    let base = if parts.get(1) == Some(&"api") { 3 } else { 4 };
    if parts.len() == base + 3 && parts[base] == "namespaces" {
        let collection = format!("{}/{}", parts[..base].join("/"), parts[base + 2]);
        return (collection, Some(parts[base + 1].to_string()));
    }
    (path.trim_end_matches('/').to_string(), None)
}

/// `/api/v1/namespaces/<ns>/secrets/<name>` → (collection, namespace, name).
fn object_route(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let base = if parts.get(1) == Some(&"api") { 3 } else { 4 };
    if parts.len() == base + 4 && parts[base] == "namespaces" {
        let collection = format!("{}/{}", parts[..base].join("/"), parts[base + 2]);
        return Some((collection, parts[base + 1].into(), parts[base + 3].into()));
    }
    // A cluster-scoped object: `/api/v1/namespaces/<name>`.
    if parts.len() == base + 2 {
        let collection = format!("{}/{}", parts[..base].join("/"), parts[base]);
        return Some((collection, String::new(), parts[base + 1].into()));
    }
    None
}

fn get(shared: &Shared, key: (String, String, String)) -> Reply {
    let object = lock(shared).objects.get(&key).cloned();
    match object {
        Some(o) => Reply::Json(200, o),
        None => Reply::Json(
            404,
            status(404, "NotFound", &format!("{} {:?} not found", key.0, key.2)),
        ),
    }
}

pub(super) fn list(shared: &Shared, request: &Request) -> Reply {
    if let Some(key) = object_route(&request.path) {
        return get(shared, key);
    }
    let (collection, namespace) = route(&request.path);
    if let Some(bad) = unsupported_field(&collection, request) {
        return Reply::Json(400, bad);
    }
    let store = lock(shared);
    let known = store.objects.keys().any(|(c, _, _)| *c == collection)
        || KNOWN.iter().any(|k| collection == *k);
    if !known {
        drop(store);
        return Reply::Json(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    let fields = request
        .query
        .get("fieldSelector")
        .cloned()
        .unwrap_or_default();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((c, ns, _), _)| *c == collection && namespace.as_ref().is_none_or(|n| n == ns))
        .filter(|(_, o)| fields_match(o, &fields))
        .map(|(_, o)| o.clone())
        .collect();
    let body = json!({"kind": "List", "apiVersion": "v1",
                      "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
    drop(store);
    Reply::Json(200, body)
}

/// The field selectors the API server supports: any object's name and namespace, and for
/// pods a few more; anything else is a 400, as a real API server answers.
pub(super) fn unsupported_field(collection: &str, request: &Request) -> Option<Value> {
    const POD_FIELDS: [&str; 6] = [
        "spec.nodeName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "spec.restartPolicy",
    ];
    let selector = request.query.get("fieldSelector")?;
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .find_map(|term| {
            let field = term.split(['=', '!']).next().unwrap_or_default();
            let ok = matches!(field, "metadata.name" | "metadata.namespace")
                || (collection.ends_with("/pods") && POD_FIELDS.contains(&field));
            (!ok).then(|| {
                status(
                    400,
                    "BadRequest",
                    &format!("field label not supported: {field}"),
                )
            })
        })
}

/// A JSON merge patch (RFC 7386) on one object.
pub(super) fn patch(shared: &Shared, request: &Request) -> Reply {
    // `.../<name>/status` patches the same stored object (the emulator keeps no separate
    // status; what matters to tests is that clients use the subresource they are granted).
    let path = request.path.trim_end_matches('/');
    let path = path.strip_suffix("/status").unwrap_or(path);
    let Some(key) = object_route(path) else {
        return Reply::Json(
            405,
            status(405, "MethodNotAllowed", "PATCH needs an object path"),
        );
    };
    // Merge patches only; a JSON patch or server-side apply is not emulated, and the real
    // API server refuses a type it does not know.
    if !request
        .content_type
        .starts_with("application/merge-patch+json")
    {
        return Reply::Json(
            415,
            status(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the emulator takes merge patches, not {:?}",
                    request.content_type
                ),
            ),
        );
    }
    let Ok(change) = serde_json::from_slice::<Value>(&request.body) else {
        return Reply::Json(400, status(400, "BadRequest", "the patch is not JSON"));
    };
    let mut store = lock(shared);
    let Some(mut object) = store.objects.get(&key).cloned() else {
        drop(store);
        return Reply::Json(
            404,
            status(404, "NotFound", &format!("{} {:?} not found", key.0, key.2)),
        );
    };
    // metadata.uid in a patch is a precondition, as the API server treats it.
    if let Some(uid) = change["metadata"]["uid"].as_str()
        && object["metadata"]["uid"].as_str() != Some(uid)
    {
        drop(store);
        return Reply::Json(
            409,
            status(
                409,
                "Conflict",
                &format!("Precondition failed: UID in precondition: {uid}"),
            ),
        );
    }
    merge_patch(&mut object, &change);
    let stored = put_in(&mut store, object);
    drop(store);
    shared.changed.notify_all();
    match stored {
        Ok(stored) => Reply::Json(200, stored),
        Err(e) => Reply::Json(422, status(422, "Invalid", &e)),
    }
}

/// Collections that exist even while empty.
const KNOWN: [&str; 16] = [
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/events",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/security.istio.io/v1/authorizationpolicies",
    "/apis/security.istio.io/v1/peerauthentications",
    "/apis/security.istio.io/v1/requestauthentications",
    "/apis/networking.istio.io/v1/virtualservices",
    "/apis/networking.istio.io/v1/destinationrules",
    "/apis/networking.istio.io/v1/serviceentries",
    "/apis/gateway.networking.k8s.io/v1/gateways",
    "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
    "/apis/gateway.networking.k8s.io/v1/httproutes",
    "/apis/gateway.networking.k8s.io/v1/grpcroutes",
    "/apis/gateway.networking.k8s.io/v1alpha2/tcproutes",
];
