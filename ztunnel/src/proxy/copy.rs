//! Copying a connection both ways with buffers that adapt: each direction starts small, grows
//! while reads keep filling the buffer (bulk traffic), and shrinks back when reads come in
//! small (interactive or idle traffic), so a thousand quiet connections cost little and a
//! busy one moves data in few syscalls. Half-close crosses over: when one side stops sending,
//! the other side's write half is shut down, and the other direction carries on.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) const MIN_BUF: usize = 4 * 1024;
pub(crate) const MAX_BUF: usize = 256 * 1024;

/// What a copy moved, and how it ended.
#[derive(Debug)]
pub struct Copied {
    /// Bytes from `a` to `b` (downstream to upstream).
    pub up: u64,
    /// Bytes from `b` to `a`.
    pub down: u64,
    /// Why it stopped early, if it did; the counts are still what crossed.
    pub error: Option<std::io::Error>,
}

/// Copies both ways until both directions end (or one fails).
pub async fn copy<A, B>(a: &mut A, b: &mut B) -> Copied
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = tokio::try_join!(
        one_way(&mut ar, &mut bw, &up),
        one_way(&mut br, &mut aw, &down)
    );
    Copied {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        error: result.err(),
    }
}

/// The next buffer size after a read of `n` bytes into a buffer of `len`.
pub(crate) fn next_size(len: usize, n: usize) -> usize {
    if n == len && len < MAX_BUF {
        len * 2
    } else if n < len / 8 && len > MIN_BUF {
        len / 2
    } else {
        len
    }
}

async fn one_way<R, W>(r: &mut R, w: &mut W, total: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; MIN_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        let size = next_size(buf.len(), n);
        if size != buf.len() {
            buf.resize(size, 0);
            buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_under_load_and_shrink_when_quiet() {
        let mut len = MIN_BUF;
        for _ in 0..10 {
            len = next_size(len, len);
        }
        assert_eq!(len, MAX_BUF, "full reads grow it to the cap");
        for _ in 0..10 {
            len = next_size(len, 10);
        }
        assert_eq!(len, MIN_BUF, "small reads shrink it to the floor");
        assert_eq!(next_size(8192, 5000), 8192, "moderate reads keep it");
    }

    #[tokio::test]
    async fn both_directions_and_half_close() {
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut server) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(async move { copy(&mut a, &mut b).await });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let up = up.clone();
            tokio::spawn(async move {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                back
            })
        };
        // The server reads everything (it sees EOF: the half-close crossed), then answers.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == up);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        let copied = relay.await.unwrap();
        assert!(copied.error.is_none(), "{copied:?}");
        assert_eq!((copied.up, copied.down), (up.len() as u64, 4));
    }
}
