//! hyper's HTTP/1.1 server for small endpoints (ztunnel's admin, metrics and readiness, the
//! node agent's readiness): one request per connection (no keep-alive), with bounds on what
//! anyone who can reach the port might otherwise push on: the request head at most
//! [`MAX_HEAD`] (beyond: 431 or the connection closed), the body at most [`MAX_BODY`] when
//! read with [`read_body`] (beyond: 413), the head read within [`HEADER_READ_TIMEOUT`] (a
//! connection that sends half a request is closed), and the whole connection within
//! [`CONNECTION_DEADLINE`]. Anything hyper cannot parse gets a 400 and only that connection
//! is closed.

use crate::Acceptor;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{
    body::{Body, Bytes, Incoming},
    service::Service,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// The request line and headers: hyper's read buffer (its minimum is 8 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// The request body (these endpoints need none, or a small one).
pub const MAX_BODY: usize = 64 * 1024;
/// From the connection's start until its request head is in.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole connection: head, body and answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` on `listener` forever, a task per connection, within the limits above;
/// accept errors back off (see [`Acceptor`]). The service is cloned for each connection.
pub async fn serve_http1<S, B>(listener: TcpListener, mut acceptor: Acceptor, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let (conn, _) = acceptor.accept(&listener).await;
        tokio::spawn(serve_connection(conn, acceptor.name(), service.clone()));
    }
}

/// One connection, one request. How it ends is for debugging only: anyone who reaches the
/// port can make connections end badly.
async fn serve_connection<S, B>(conn: TcpStream, listener: &'static str, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(conn), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(listener, %error, "connection failed"),
        Err(_) => debug!(listener, "connection past its deadline"),
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the request body")]
    Read(#[source] BoxError),
}

impl BodyError {
    /// The status to answer with: 413 for a body over the limit, 400 for one that broke off.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A plain-text answer for the client (it says no more than the status does).
    pub fn text(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "request body too large\n",
            Self::Read(_) => "bad request body\n",
        }
    }
}

/// The body, at most `limit` bytes ([`MAX_BODY`] for these endpoints). A body that says in
/// its length that it will be over is refused before anything is read.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(error) => Err(BodyError::Read(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use std::{convert::Infallible, net::SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers with the status [`read_body`] leads to, and the body's length.
    async fn echo_length(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, text) = match read_body(request.into_body(), MAX_BODY).await {
            Ok(body) => (StatusCode::OK, format!("{}\n", body.len())),
            Err(refused) => (refused.status(), refused.text().to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        Ok(response)
    }

    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(serve_http1(
            listener,
            Acceptor::new("test"),
            service_fn(echo_length),
        ));
        addr
    }

    /// Sends `request` and reads the answer until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        // The server may close while a large request is still being written.
        let _ = conn.write_all(request).await;
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn post(length: usize) -> Vec<u8> {
        let mut request =
            format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n").into_bytes();
        request.resize(request.len() + length, b'a');
        request
    }

    #[tokio::test]
    async fn a_request_within_the_limits_is_served_and_the_connection_closed() {
        let addr = server().await;
        let answer = exchange(addr, &post(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n10\n"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413() {
        let addr = server().await;
        let answer = exchange(addr, &post(MAX_BODY + 1)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.ends_with("request body too large\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused() {
        let addr = server().await;
        let request = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let answer = exchange(addr, request.as_bytes()).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }
}
