//! A body that counts the bytes of its data frames as they pass and reports, once, when it
//! ends: as soon as its last frame has been handed on (before the proxy writes it, so the
//! report precedes the client's seeing the end), or when it is dropped unfinished (a client
//! that went away). Request and response sizes, and a gRPC status sent in trailers, are
//! known only then.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

/// How a body ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    pub bytes: u64,
    /// `grpc-status` from its trailers.
    pub grpc_status: Option<String>,
}

/// Called once, when the body ends.
pub type OnEnd = Box<dyn FnOnce(Ended) + Send + Sync>;

pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
    grpc_status: Option<String>,
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B> Counted<B> {
    /// Counts into `bytes` (which others may read meanwhile).
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            bytes,
            on_end: None,
            grpc_status: None,
        }
    }

    /// Counts, and hands the total to `on_end` when dropped.
    pub fn reporting(inner: B, on_end: OnEnd) -> Self {
        Self {
            inner,
            bytes: Arc::default(),
            on_end: Some(on_end),
            grpc_status: None,
        }
    }

    fn end(&mut self) {
        if let Some(report) = self.on_end.take() {
            report(Ended {
                bytes: self.bytes.load(Ordering::Relaxed),
                grpc_status: self.grpc_status.take(),
            });
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    self.grpc_status = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    self.end();
                } else if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.end();
    }
}

/// The size of a head as it goes on the wire in HTTP/1.1 (close enough for HTTP/2, whose
/// compressed size depends on the connection): each header's name, value and separators.
pub fn head_bytes(headers: &http::HeaderMap, first_line: usize) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (first_line + fields + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::Mutex;

    #[tokio::test]
    async fn bytes_and_trailers_are_reported_once_at_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = || {
            let seen = seen.clone();
            Box::new(move |e: Ended| seen.lock().unwrap().push(e)) as OnEnd
        };
        let body = Counted::reporting(Full::new(Bytes::from_static(b"hello world")), recorder());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello world");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Ended {
                bytes: 11,
                grpc_status: None
            }]
        );
        // Data then trailers: the status comes from the trailers.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let stream = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let body = Counted::reporting(stream, recorder());
        body.collect().await.unwrap();
        assert_eq!(
            seen.lock().unwrap()[1],
            Ended {
                bytes: 3,
                grpc_status: Some("14".into())
            }
        );
        // Abandoned before it was read: reported with what passed (nothing).
        drop(Counted::reporting(
            Full::new(Bytes::from_static(b"x")),
            recorder(),
        ));
        assert_eq!(seen.lock().unwrap()[2], Ended::default());
        assert_eq!(seen.lock().unwrap().len(), 3, "once each");
    }
}
