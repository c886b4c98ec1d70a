//! A small Kubernetes API server emulator for tests: the real HTTP list/watch protocol
//! (JSON objects, `resourceVersion`, chunked watch event streams, bookmarks, and an `ERROR`
//! event with a 410 `Status` when a watch asks for history that has been compacted), enough
//! for kube-rs watchers, so that code under test is the code that runs against a cluster.
//!
//! Objects are put in and taken out from the test through [`KubeApi::apply`] /
//! [`KubeApi::delete`]; every change bumps the resource version and wakes the watches.
//! Plain HTTP on loopback only; threads, no runtime.

mod encoding;

use encoding::{fields_match, merge_patch, percent_decode};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// (collection path, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    events: Vec<Event>,
    /// Watches from a version older than this get 410 Gone.
    oldest: u64,
}

/// What the emulated TokenReview knows about a bearer token.
#[derive(Debug, Clone, Default)]
pub struct TokenInfo {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    pub audiences: Vec<String>,
    /// The pod the token is bound to (`authentication.kubernetes.io/pod-name`).
    pub pod_name: Option<String>,
    /// Its node (`authentication.kubernetes.io/node-name`).
    pub node_name: Option<String>,
    pub expired: bool,
}

#[derive(Debug, Default)]
struct Shared {
    tokens: Mutex<BTreeMap<String, TokenInfo>>,
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The emulator; stops (and closes every watch) when dropped.
#[derive(Debug)]
pub struct KubeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// The list path of the collection an object belongs to (`/api/v1/pods`,
/// `/apis/security.istio.io/v1/authorizationpolicies`).
fn collection_of(object: &Value) -> Result<String, String> {
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or("the object has no apiVersion")?;
    let kind = object["kind"].as_str().ok_or("the object has no kind")?;
    let lower = kind.to_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    Ok(if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    })
}

impl KubeApi {
    /// Listens on a loopback port.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve_connection(conn, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            address,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:<port>`, for the client's cluster URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Creates or replaces an object (JSON, as `kubectl apply` would send it).
    pub fn apply(&self, object: Value) -> Result<(), String> {
        put(&self.shared, object).map(|_| ())
    }

    /// The objects of a collection (`/api/v1/events`, ...), for assertions.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Applies every document of a multi-document YAML text.
    pub fn apply_yaml(&self, text: &str) -> Result<(), String> {
        use serde::Deserialize;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
            if value.is_null() {
                continue;
            }
            let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
            self.apply(json)?;
        }
        Ok(())
    }

    /// Deletes an object; `api_version`/`kind` as in the object.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), String> {
        let collection = collection_of(&json!({"apiVersion": api_version, "kind": kind}))?;
        let mut store = self.lock();
        let key = (collection.clone(), namespace.to_string(), name.to_string());
        let mut object = store
            .objects
            .remove(&key)
            .ok_or_else(|| format!("{kind} {namespace}/{name} does not exist"))?;
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.events.push(Event {
            rv,
            collection,
            namespace: namespace.to_string(),
            kind: "DELETED",
            object,
        });
        drop(store);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Makes `token` known to TokenReview.
    pub fn add_token(&self, token: &str, info: TokenInfo) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.to_string(), info);
    }

    /// Forgets the event history, as etcd compaction does: a watch resuming from an older
    /// version is told 410 Gone and must list again.
    pub fn compact(&self) {
        let mut store = self.lock();
        store.events.clear();
        // The compaction itself takes a version, so every client's version is now too old,
        // and a fresh list returns one that is not.
        store.rv += 1;
        store.oldest = store.rv;
        drop(store);
        // Open watches end (as when the API server restarts) and meet the 410 on resuming.
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Stores an object: a new resource version, ADDED or MODIFIED for the watches.
fn put(shared: &Shared, object: Value) -> Result<Value, String> {
    let mut store = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stored = put_in(&mut store, object);
    drop(store);
    shared.changed.notify_all();
    stored
}

/// Stores an object under a lock the caller holds (so a read-modify-write is atomic); the
/// caller wakes the watches once it lets go.
fn put_in(store: &mut Store, mut object: Value) -> Result<Value, String> {
    let collection = collection_of(&object)?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or("the object has no metadata.name")?
        .to_string();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    store.rv += 1;
    let rv = store.rv;
    let key = (collection.clone(), namespace.clone(), name);
    let previous = store.objects.get(&key).cloned();
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = previous.as_ref().map_or_else(
        || json!(format!("uid-{rv}")),
        |p| p["metadata"]["uid"].clone(),
    );
    store.objects.insert(key, object.clone());
    store.events.push(Event {
        rv,
        collection,
        namespace,
        kind: if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        },
        object: object.clone(),
    });
    Ok(object)
}

/// A parsed request line: path and query parameters.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut content_length = 0usize;
    let mut content_type = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_string();
            }
        }
    }
    let mut body = vec![0; content_length];
    if content_length > 0 {
        std::io::Read::read_exact(reader, &mut body).ok()?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        body,
    })
}

/// Serves requests on one connection until it closes (keep-alive, as kube-rs pools them).
fn serve_connection(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(conn);
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(request) = read_request(&mut reader) else {
            // A read timeout on an idle kept-alive connection: keep waiting unless stopping.
            if reader.buffer().is_empty() && !shared.stop.load(Ordering::Relaxed) {
                match reader.get_ref().peek(&mut [0u8; 1]) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        continue;
                    }
                    Err(_) => return,
                }
            }
            return;
        };
        let ok = if request.method == "POST"
            && request.path == "/apis/authentication.k8s.io/v1/tokenreviews"
        {
            token_review(&mut writer, shared, &request)
        } else if request.method == "POST" {
            create(&mut writer, shared, &request)
        } else if request.method == "PATCH" {
            patch(&mut writer, shared, &request)
        } else if request.method != "GET" {
            respond(
                &mut writer,
                405,
                &status(405, "MethodNotAllowed", "only GET"),
            )
        } else if matches!(
            request.query.get("watch").map(String::as_str),
            Some("true" | "1")
        ) {
            watch(&mut writer, shared, &request)
        } else {
            list(&mut writer, shared, &request)
        };
        if !ok {
            return;
        }
    }
}

/// A POST to a namespaced collection (e.g. events): stored, watchable, listed.
fn create(w: &mut TcpStream, shared: &Shared, request: &Request) -> bool {
    let (collection, namespace) = route(&request.path);
    let Ok(mut object) = serde_json::from_slice::<Value>(&request.body) else {
        return respond(w, 400, &status(400, "BadRequest", "the body is not JSON"));
    };
    if let Some(ns) = &namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let exists = {
        let store = shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        store.objects.contains_key(&(
            collection.clone(),
            namespace.clone().unwrap_or_default(),
            name.to_string(),
        ))
    };
    if exists {
        return respond(
            w,
            409,
            &status(409, "AlreadyExists", "the object already exists"),
        );
    }
    if collection_of(&object).ok().as_deref() != Some(collection.as_str()) {
        return respond(
            w,
            400,
            &status(
                400,
                "BadRequest",
                "the object's kind does not match the path",
            ),
        );
    }
    match put(shared, object) {
        Ok(stored) => respond(w, 201, &stored),
        Err(e) => respond(w, 400, &status(400, "BadRequest", &e)),
    }
}

/// TokenReview as the API server answers it: authenticated with the user and the token's
/// audiences, or not with an error (unknown, expired, or no audience in common).
fn token_review(w: &mut TcpStream, shared: &Shared, request: &Request) -> bool {
    let Ok(review) = serde_json::from_slice::<Value>(&request.body) else {
        return respond(w, 400, &status(400, "BadRequest", "the body is not JSON"));
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
    respond(w, 201, &body)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> bool {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        match code {
            200 => "OK",
            201 => "Created",
            _ => "Error",
        },
        body.len()
    );
    w.write_all(head.as_bytes())
        .and_then(|()| w.write_all(body.as_bytes()))
        .is_ok()
}

/// `/api/v1/pods` or `/api/v1/namespaces/<ns>/pods` → (collection, namespace filter).
fn route(path: &str) -> (String, Option<String>) {
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

fn get(w: &mut TcpStream, shared: &Shared, key: (String, String, String)) -> bool {
    let object = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .objects
        .get(&key)
        .cloned();
    match object {
        Some(o) => respond(w, 200, &o),
        None => respond(
            w,
            404,
            &status(404, "NotFound", &format!("{} {:?} not found", key.0, key.2)),
        ),
    }
}

fn list(w: &mut TcpStream, shared: &Shared, request: &Request) -> bool {
    if let Some(key) = object_route(&request.path) {
        return get(w, shared, key);
    }
    let (collection, namespace) = route(&request.path);
    if let Some(bad) = unsupported_field(&collection, request) {
        return respond(w, 400, &bad);
    }
    let store = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = store.objects.keys().any(|(c, _, _)| *c == collection)
        || KNOWN.iter().any(|k| collection == *k);
    if !known {
        drop(store);
        return respond(
            w,
            404,
            &status(
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
    respond(w, 200, &body)
}

/// The field selectors the API server supports: any object's name and namespace, and for
/// pods a few more; anything else is a 400, as a real API server answers.
fn unsupported_field(collection: &str, request: &Request) -> Option<Value> {
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
fn patch(w: &mut TcpStream, shared: &Shared, request: &Request) -> bool {
    // `.../<name>/status` patches the same stored object (the emulator keeps no separate
    // status; what matters to tests is that clients use the subresource they are granted).
    let path = request.path.trim_end_matches('/');
    let path = path.strip_suffix("/status").unwrap_or(path);
    let Some(key) = object_route(path) else {
        return respond(
            w,
            405,
            &status(405, "MethodNotAllowed", "PATCH needs an object path"),
        );
    };
    // Merge patches only; a JSON patch or server-side apply is not emulated, and the real
    // API server refuses a type it does not know.
    if !request
        .content_type
        .starts_with("application/merge-patch+json")
    {
        return respond(
            w,
            415,
            &status(
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
        return respond(w, 400, &status(400, "BadRequest", "the patch is not JSON"));
    };
    let mut store = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut object) = store.objects.get(&key).cloned() else {
        drop(store);
        return respond(
            w,
            404,
            &status(404, "NotFound", &format!("{} {:?} not found", key.0, key.2)),
        );
    };
    // metadata.uid in a patch is a precondition, as the API server treats it.
    if let Some(uid) = change["metadata"]["uid"].as_str()
        && object["metadata"]["uid"].as_str() != Some(uid)
    {
        drop(store);
        return respond(
            w,
            409,
            &status(
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
        Ok(stored) => respond(w, 200, &stored),
        Err(e) => respond(w, 422, &status(422, "Invalid", &e)),
    }
}

/// Collections that exist even while empty.
const KNOWN: [&str; 7] = [
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/events",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/security.istio.io/v1/authorizationpolicies",
    "/apis/security.istio.io/v1/peerauthentications",
];

fn chunk(w: &mut TcpStream, event: &Value) -> bool {
    let mut line = event.to_string();
    line.push('\n');
    w.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .and_then(|()| w.flush())
        .is_ok()
}

fn watch(w: &mut TcpStream, shared: &Shared, request: &Request) -> bool {
    let (collection, namespace) = route(&request.path);
    if let Some(bad) = unsupported_field(&collection, request) {
        return respond(w, 400, &bad);
    }
    let mut since: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let fields = request
        .query
        .get("fieldSelector")
        .cloned()
        .unwrap_or_default();
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut last_bookmark = Instant::now();
    let mut store = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if since == 0 {
        since = store.rv;
    }
    let mut gone = since < store.oldest;
    loop {
        if gone {
            let event = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {since} ({})", store.oldest))});
            drop(store);
            let _ = chunk(w, &event);
            break;
        }
        let pending: Vec<Event> = store
            .events
            .iter()
            .filter(|e| {
                e.rv > since
                    && e.collection == collection
                    && namespace.as_ref().is_none_or(|n| *n == e.namespace)
                    && fields_match(&e.object, &fields)
            })
            .cloned()
            .collect();
        let rv = store.rv;
        drop(store);
        for e in &pending {
            if !chunk(w, &json!({"type": e.kind, "object": e.object})) {
                return false;
            }
        }
        since = rv;
        if bookmarks && last_bookmark.elapsed() > Duration::from_millis(500) {
            let kind = collection.rsplit('/').next().unwrap_or_default();
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                                  "metadata": {"resourceVersion": rv.to_string()}}});
            if !chunk(w, &bookmark) {
                return false;
            }
            last_bookmark = Instant::now();
        }
        if Instant::now() > deadline || shared.stop.load(Ordering::Relaxed) {
            break;
        }
        store = shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if store.rv == since {
            store = shared
                .changed
                .wait_timeout(store, Duration::from_millis(250))
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if since < store.oldest {
            // Compacted under this watch: end it; the client resumes and is told 410.
            drop(store);
            break;
        }
        gone = false;
    }
    w.write_all(b"0\r\n\r\n").and_then(|()| w.flush()).is_ok()
}
