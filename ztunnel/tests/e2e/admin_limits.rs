//! The bounds of ztunnel's HTTP endpoints (hyper's HTTP/1.1 server): an oversized request
//! head, a body over the limit, and a connection that never finishes its request head.

use crate::support::*;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// Sends `request` on a fresh connection; the status of the answer, `None` when the server
/// closed without one (or reset the connection after refusing what it had not read).
fn status_or_closed(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A write may fail once the server has refused and closed.
    let _ = conn.write_all(request);
    let mut out = Vec::new();
    match conn.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the answer: {e}"),
    }
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

#[test]
fn an_oversized_request_head_is_refused_and_the_endpoint_keeps_serving() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1")]);
    let z = &mesh.node("node1").ztunnel;
    let filler = "x".repeat(32 * 1024);
    let request = format!("GET /config_dump HTTP/1.1\r\nHost: z\r\nX-Filler: {filler}\r\n\r\n");
    let status = status_or_closed(z.endpoint("Admin"), request.as_bytes());
    assert!(
        matches!(status, None | Some(431)),
        "a 32 KiB header gets 431 or the connection closed, got {status:?}"
    );
    assert_eq!(z.http("Admin", "GET", "/config_dump").0, 200);
}

#[test]
fn a_request_body_over_the_limit_is_413_and_changes_nothing() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1")]);
    let z = &mesh.node("node1").ztunnel;
    let request =
        b"POST /logging?level=debug HTTP/1.1\r\nHost: z\r\nContent-Length: 1048576\r\n\r\n";
    assert_eq!(
        status_or_closed(z.endpoint("Admin"), request),
        Some(413),
        "a 1 MiB body is refused before it is read"
    );
    assert_eq!(
        z.http("Admin", "GET", "/logging"),
        (200, "current log level is info\n".to_string()),
        "the refused request did not change the level"
    );
    // A body within the limit is read and the request served.
    let body = "x".repeat(1024);
    let request = format!(
        "POST /logging?level=debug HTTP/1.1\r\nHost: z\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        status_or_closed(z.endpoint("Admin"), request.as_bytes()),
        Some(200)
    );
}

#[test]
fn a_connection_that_sends_half_a_request_is_closed() {
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1")]);
    let z = &mesh.node("node1").ztunnel;
    for role in ["Admin", "Readiness", "Metrics"] {
        let mut conn = TcpStream::connect(z.endpoint(role)).unwrap();
        // Longer than the header read timeout: the server must end it first.
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: z\r\n")
            .unwrap();
        let mut buf = [0u8; 64];
        // A signal to the test process (a child exiting) may interrupt the wait: read again.
        let read = loop {
            match conn.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        assert!(
            matches!(read, Ok(0)),
            "{role}: the server closes a request head that never ends, got {read:?}"
        );
    }
    assert_eq!(z.http("Metrics", "GET", "/metrics").0, 200);
}
