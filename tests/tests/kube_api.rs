//! The API emulator speaks list/watch as the API server does (checked with raw HTTP here;
//! the control plane's e2e test checks it with kube-rs).

use amesh_testbed::kube_api::KubeApi;
use serde_json::{Value, json};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

fn request(api: &KubeApi, target: &str) -> BufReader<TcpStream> {
    let address = api.url().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(address).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {target} HTTP/1.1\r\nHost: api\r\n\r\n").expect("write");
    BufReader::new(s)
}

/// Status code and headers.
fn head(r: &mut BufReader<TcpStream>) -> (u16, Vec<String>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("code");
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h.trim().is_empty() {
            return (code, headers);
        }
        headers.push(h.trim().to_lowercase());
    }
}

fn body(r: &mut BufReader<TcpStream>, headers: &[String]) -> Value {
    let len: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:")?.trim().parse().ok())
        .expect("content-length");
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).expect("body");
    serde_json::from_slice(&buf).expect("json")
}

/// The next watch event (one JSON object per chunk).
fn event(r: &mut BufReader<TcpStream>) -> Value {
    let mut size = String::new();
    r.read_line(&mut size).expect("chunk size");
    let mut line = String::new();
    r.read_line(&mut line).expect("chunk");
    let mut crlf = String::new();
    r.read_line(&mut crlf).expect("chunk end");
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn pod(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}})
}

#[test]
fn list_then_watch_from_the_listed_version() {
    let api = KubeApi::start().expect("start");
    api.apply(pod("p1", "a")).expect("apply");
    api.apply(pod("p2", "b")).expect("apply");

    let mut r = request(&api, "/api/v1/pods?limit=500");
    let (code, headers) = head(&mut r);
    assert_eq!(code, 200);
    let list = body(&mut r, &headers);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut r = request(&api, "/api/v1/namespaces/a/pods");
    let (_, headers) = head(&mut r);
    assert_eq!(
        body(&mut r, &headers)["items"].as_array().map(Vec::len),
        Some(1),
        "namespaced list"
    );

    let mut w = request(
        &api,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=5"),
    );
    let (code, headers) = head(&mut w);
    assert_eq!(code, 200);
    assert!(
        headers.iter().any(|h| h == "transfer-encoding: chunked"),
        "{headers:?}"
    );
    api.apply(pod("p3", "a")).expect("apply");
    api.apply(pod("p3", "a")).expect("re-apply");
    api.delete("v1", "Pod", "b", "p2").expect("delete");
    let kinds: Vec<(String, String)> = (0..3)
        .map(|_| {
            let e = event(&mut w);
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ADDED".into(), "p3".into()),
            ("MODIFIED".into(), "p3".into()),
            ("DELETED".into(), "p2".into())
        ]
    );
}

#[test]
fn a_watch_from_compacted_history_gets_410_and_unknown_paths_404() {
    let api = KubeApi::start().expect("start");
    api.apply(pod("p1", "a")).expect("apply");
    api.compact();
    let mut w = request(&api, "/api/v1/pods?watch=true&resourceVersion=1");
    let (code, _) = head(&mut w);
    assert_eq!(
        code, 200,
        "the API server reports 410 inside the watch stream"
    );
    let e = event(&mut w);
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");

    let mut r = request(&api, "/api/v1/widgets");
    let (code, headers) = head(&mut r);
    assert_eq!(code, 404);
    assert_eq!(body(&mut r, &headers)["kind"], "Status");
}

#[test]
fn field_selectors_and_patches_as_the_api_server_takes_them() {
    let api = KubeApi::start().expect("emulator");
    for (name, node) in [("a", "node1"), ("b", "node2")] {
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"nodeName": node}}))
            .expect("pod");
    }
    // The kubelet's (and the node agent's) selector: only that node's pods.
    let mut r = request(&api, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode1");
    let (code, headers) = head(&mut r);
    assert_eq!(code, 200);
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:")?.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0; length];
    r.read_exact(&mut body).expect("body");
    let list: Value = serde_json::from_slice(&body).expect("list");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a"]);
    // A field the API server does not index is a 400, not an unfiltered list.
    let mut r = request(&api, "/api/v1/pods?fieldSelector=spec.containers%3Dx");
    assert_eq!(head(&mut r).0, 400);
    // Merge patches apply; other patch types are refused; a UID precondition is checked.
    let patch = |content_type: &str, body: &str| {
        let address = api.url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(address).expect("connect");
        write!(
            s,
            "PATCH /api/v1/namespaces/ns/pods/a/status HTTP/1.1\r\nHost: api\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        head(&mut BufReader::new(s)).0
    };
    let mark = r#"{"metadata":{"annotations":{"k":"v"}}}"#;
    assert_eq!(patch("application/merge-patch+json", mark), 200);
    assert_eq!(patch("application/json-patch+json", "[]"), 415);
    assert_eq!(
        patch(
            "application/merge-patch+json",
            r#"{"metadata":{"uid":"not-this-pod","annotations":{"k":null}}}"#
        ),
        409
    );
    let a = api
        .objects("/api/v1/pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "a")
        .expect("a");
    assert_eq!(a["metadata"]["annotations"]["k"], "v");
}
