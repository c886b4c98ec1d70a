//! A small Kubernetes API server emulator for tests: the real HTTP list/watch protocol
//! (JSON objects, `resourceVersion`, chunked watch event streams, bookmarks, and an `ERROR`
//! event with a 410 `Status` when a watch asks for history that has been compacted), enough
//! for kube-rs watchers, so that code under test is the code that runs against a cluster.
//!
//! Objects are put in and taken out from the test through [`KubeApi::apply`] /
//! [`KubeApi::delete`]; every change bumps the resource version and wakes the watches.
//! Plain HTTP on loopback only: hyper's HTTP/1.1 server on a small tokio runtime of the
//! emulator's own thread ([`server`]); the public API stays blocking.

mod encoding;
mod handlers;
mod server;
mod watch;

use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
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
    /// Ends the server's accept loop (and with its runtime, every connection).
    shutdown: tokio::sync::Notify,
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
    // A consonant and y: `policy` → `policies`; a vowel and y: `gateway` → `gateways`.
    let plural = match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        None if lower.ends_with('s') => format!("{lower}es"),
        _ => format!("{lower}s"),
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || runtime.block_on(server::run(listener, s)));
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

    fn lock(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        self.shared.shutdown.notify_one();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Stores an object: a new resource version, ADDED or MODIFIED for the watches.
fn put(shared: &Shared, object: Value) -> Result<Value, String> {
    let mut store = lock(shared);
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

/// The store, even after a panic elsewhere (a test's assertion must not wedge the emulator).
fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
