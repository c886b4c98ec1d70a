//! A stand-in for the node agent's side of ZDS, for ztunnel's tests: listens on the
//! SEQPACKET socket, accepts ztunnel, and sends add/keep/del/snapshot messages (with real
//! netns fds), returning each ACK or NACK.

use amesh_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use amesh_sys::seqpacket;
use prost::Message;
use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FakeAgent {
    path: PathBuf,
    listener: OwnedFd,
    conn: Option<OwnedFd>,
}

fn retry<T>(what: &str, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: timed out"),
                ));
            }
            other => return other,
        }
    }
}

impl FakeAgent {
    pub fn listen(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            listener: seqpacket::listen(path)?,
            conn: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for ztunnel to connect and say hello; returns the version it announced.
    pub fn accept(&mut self) -> io::Result<i32> {
        let conn = retry("waiting for ztunnel to connect", || {
            seqpacket::accept(self.listener.as_fd())
        })?;
        let mut buf = vec![0u8; 1024];
        let got = retry("waiting for hello", || {
            seqpacket::recv(conn.as_fd(), &mut buf)
        })?;
        let got =
            got.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "ztunnel hung up"))?;
        let hello = ZdsHello::decode(&buf[..got.len]).map_err(io::Error::other)?;
        self.conn = Some(conn);
        Ok(hello.version)
    }

    /// Sends raw bytes with `fds` and returns ztunnel's answer: `Ok(())` for an ACK,
    /// `Err(reason)` for a NACK.
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<Result<(), String>> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| io::Error::other("not connected"))?;
        seqpacket::send(conn.as_fd(), bytes, fds)?;
        let mut buf = vec![0u8; 4096];
        let got = retry("waiting for the answer", || {
            seqpacket::recv(conn.as_fd(), &mut buf)
        })?;
        let got =
            got.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "ztunnel hung up"))?;
        let resp = WorkloadResponse::decode(&buf[..got.len]).map_err(io::Error::other)?;
        match resp.payload {
            Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
            Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
            None => Err(io::Error::other("empty answer")),
        }
    }

    fn request(&self, payload: Payload, fds: &[BorrowedFd<'_>]) -> io::Result<Result<(), String>> {
        self.send_raw(
            &WorkloadRequest {
                payload: Some(payload),
            }
            .encode_to_vec(),
            fds,
        )
    }

    /// `add` for a pod, its netns fd attached.
    pub fn add(
        &self,
        uid: &str,
        name: &str,
        namespace: &str,
        service_account: &str,
        netns: BorrowedFd<'_>,
    ) -> io::Result<Result<(), String>> {
        let info = WorkloadInfo {
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        self.request(
            Payload::Add(AddWorkload {
                uid: uid.into(),
                workload_info: Some(info),
            }),
            &[netns],
        )
    }

    pub fn keep(&self, uid: &str) -> io::Result<Result<(), String>> {
        self.request(Payload::Keep(KeepWorkload { uid: uid.into() }), &[])
    }

    pub fn del(&self, uid: &str) -> io::Result<Result<(), String>> {
        self.request(Payload::Del(DelWorkload { uid: uid.into() }), &[])
    }

    pub fn snapshot_sent(&self) -> io::Result<Result<(), String>> {
        self.request(Payload::SnapshotSent(SnapshotSent {}), &[])
    }

    /// Drops the connection (as an agent restart would).
    pub fn hang_up(&mut self) {
        self.conn = None;
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
