//! `amesh-bench serve --port P`: the server the load modes talk to, on one port. The first
//! byte of a connection says what it is:
//!
//! - `p` (ping-pong): every byte read is answered with one byte, for as long as it stays open;
//! - `c` (connect): one byte back, then the server closes (so the TIME_WAIT is the server's
//!   and the client's ephemeral ports stay free);
//! - `G` (HTTP/1.1): every `GET` gets `200` with a [`HTTP_BODY`]-byte body, keep-alive.

use anyhow::{Context, Result};
use std::io::Write;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// First byte of a ping-pong connection (and every request on it).
pub const PING: u8 = b'p';
/// First (and only) byte of a connect-mode connection.
pub const CONNECT: u8 = b'c';
/// Size of the HTTP response body.
pub const HTTP_BODY: usize = 1024;
/// What the HTTP client sends.
pub const HTTP_REQUEST: &[u8] =
    b"GET /1k HTTP/1.1\r\nHost: bench\r\nUser-Agent: amesh-bench\r\n\r\n";

/// Serves on `[::]:port` (IPv4 too) until killed; prints `ready` once listening.
pub fn serve(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("::", port))
            .await
            .with_context(|| format!("listening on port {port}"))?;
        println!("ready");
        std::io::stdout().flush()?;
        accept_loop(listener).await
    })
}

async fn accept_loop(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

/// A server on a loopback port, on a thread of its own, for tests.
#[cfg(test)]
pub fn spawn_for_test() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async move { accept_loop(TcpListener::from_std(listener).unwrap()).await })
    });
    addr
}

fn http_response() -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {HTTP_BODY}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', HTTP_BODY));
    r
}

async fn connection(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    match buf[0] {
        CONNECT => {
            s.write_all(&[CONNECT]).await?;
            s.shutdown().await
        }
        b'G' => http(s, buf, n).await,
        _ => ping_pong(s, buf, n).await,
    }
}

async fn ping_pong(mut s: TcpStream, mut buf: Vec<u8>, mut n: usize) -> std::io::Result<()> {
    let pongs = vec![PING; buf.len()];
    while n > 0 {
        s.write_all(&pongs[..n]).await?;
        n = s.read(&mut buf).await?;
    }
    Ok(())
}

async fn http(mut s: TcpStream, mut buf: Vec<u8>, mut n: usize) -> std::io::Result<()> {
    let response = http_response();
    let mut pending: Vec<u8> = Vec::new();
    while n > 0 {
        pending.extend_from_slice(&buf[..n]);
        let (complete, rest) = split_requests(&pending);
        for _ in 0..complete {
            s.write_all(&response).await?;
        }
        pending.drain(..pending.len() - rest);
        n = s.read(&mut buf).await?;
    }
    Ok(())
}

/// How many complete requests (header blocks ending in a blank line; the bench's requests
/// have no body) `data` holds, and how many bytes after them are an incomplete one.
pub fn split_requests(data: &[u8]) -> (usize, usize) {
    let mut complete = 0;
    let mut start = 0;
    while let Some(end) = find(&data[start..], b"\r\n\r\n") {
        complete += 1;
        start += end + 4;
    }
    (complete, data.len() - start)
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pipelined_and_partial_requests() {
        assert_eq!(split_requests(HTTP_REQUEST), (1, 0));
        let mut two = HTTP_REQUEST.repeat(2);
        two.extend_from_slice(b"GET / HT");
        assert_eq!(split_requests(&two), (2, 8));
        assert_eq!(split_requests(b"GET / HTTP/1.1\r\n"), (0, 16));
    }

    #[test]
    fn response_has_the_announced_body() {
        let r = http_response();
        let head = find(&r, b"\r\n\r\n").unwrap() + 4;
        assert_eq!(r.len() - head, HTTP_BODY);
        assert!(String::from_utf8_lossy(&r[..head]).contains("Content-Length: 1024\r\n"));
    }
}
