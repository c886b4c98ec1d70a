//! Watches: a chunked stream of JSON events (one per chunk), from the requested resource
//! version, with bookmarks when asked for, and an `ERROR` event carrying a 410 `Status` when
//! the version has been compacted away. Each watch waits on the store's condition variable in
//! a thread of its own and hands its events to the connection through a channel.

use super::{
    Event, Shared,
    encoding::fields_match,
    handlers::{Reply, Request, route, status, unsupported_field},
    lock,
};
use hyper::body::{Body, Bytes, Frame};
use serde_json::{Value, json};
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Events waiting for a slow client before the watch blocks.
const BUFFERED_EVENTS: usize = 64;

/// A watch's response body: its events as they come; it ends when the watch does.
#[derive(Debug)]
pub(super) struct WatchBody(mpsc::Receiver<Bytes>);

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

/// What a watch asked for.
#[derive(Debug)]
struct Watch {
    collection: String,
    namespace: Option<String>,
    since: u64,
    bookmarks: bool,
    fields: String,
    deadline: Instant,
}

pub(super) fn watch(shared: &Arc<Shared>, request: &Request) -> Reply {
    let (collection, namespace) = route(&request.path);
    if let Some(bad) = unsupported_field(&collection, request) {
        return Reply::Json(400, bad);
    }
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let watch = Watch {
        collection,
        namespace,
        since: request
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        bookmarks: request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        fields: request
            .query
            .get("fieldSelector")
            .cloned()
            .unwrap_or_default(),
        deadline: Instant::now() + timeout,
    };
    let (tx, rx) = mpsc::channel(BUFFERED_EVENTS);
    let shared = shared.clone();
    std::thread::spawn(move || stream(&shared, watch, &tx));
    Reply::Watch(WatchBody(rx))
}

/// Sends one event; false once the client has gone.
fn chunk(tx: &mpsc::Sender<Bytes>, event: &Value) -> bool {
    let mut line = event.to_string();
    line.push('\n');
    tx.blocking_send(Bytes::from(line)).is_ok()
}

/// The events of `w` after `since`, in order.
fn pending(events: &[Event], w: &Watch, since: u64) -> Vec<Event> {
    events
        .iter()
        .filter(|e| {
            e.rv > since
                && e.collection == w.collection
                && w.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                && fields_match(&e.object, &w.fields)
        })
        .cloned()
        .collect()
}

/// Streams `w` until its deadline, the emulator stops, the client goes, or the history is
/// compacted under it (the client resumes and is told 410).
fn stream(shared: &Shared, mut w: Watch, tx: &mpsc::Sender<Bytes>) {
    let mut last_bookmark = Instant::now();
    let mut store = lock(shared);
    if w.since == 0 {
        w.since = store.rv;
    }
    if w.since < store.oldest {
        let event = json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {} ({})", w.since, store.oldest))});
        drop(store);
        chunk(tx, &event);
        return;
    }
    loop {
        let events = pending(&store.events, &w, w.since);
        let rv = store.rv;
        drop(store);
        for e in &events {
            if !chunk(tx, &json!({"type": e.kind, "object": e.object})) {
                return;
            }
        }
        w.since = rv;
        if w.bookmarks && last_bookmark.elapsed() > Duration::from_millis(500) {
            let kind = w.collection.rsplit('/').next().unwrap_or_default();
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                                  "metadata": {"resourceVersion": rv.to_string()}}});
            if !chunk(tx, &bookmark) {
                return;
            }
            last_bookmark = Instant::now();
        }
        if Instant::now() > w.deadline || shared.stop.load(Ordering::Relaxed) || tx.is_closed() {
            return;
        }
        store = lock(shared);
        if store.rv == w.since {
            store = shared
                .changed
                .wait_timeout(store, Duration::from_millis(250))
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if w.since < store.oldest {
            // Compacted under this watch: end it; the client resumes and is told 410.
            return;
        }
    }
}
