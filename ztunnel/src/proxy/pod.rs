//! One pod as the proxy serves it ([`PodCtx`]), and sockets inside its network namespace
//! ([`PodNet`]): ztunnel's listeners there, and its connections from there (to other pods
//! over HBONE, to the pod's own app, or plain passthrough). Every socket ztunnel connects
//! with carries its mark, so the capture programs let it through.

use amesh_ebpf_common::ZTUNNEL_MARK;
use amesh_identity::{Identity, WorkloadCert};
use amesh_sys::netns::Netns;
use socket2::{Domain, Socket, Type};
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One pod as ztunnel serves it.
#[derive(Debug)]
pub struct PodCtx {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    pub pod_id: u32,
    pub net: PodNet,
    /// The TLS server config for the current certificate, rebuilt when it changes.
    pub server_tls: Mutex<Option<(Arc<WorkloadCert>, Arc<rustls::ServerConfig>)>>,
}

/// Backlog of in-pod listeners.
const BACKLOG: i32 = 1024;

#[derive(Debug)]
pub struct PodNet {
    netns: Netns,
    home: Arc<Netns>,
}

impl PodNet {
    pub fn new(netns: Netns, home: Arc<Netns>) -> Self {
        Self { netns, home }
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn in_pod<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.netns
            .enter_briefly(&self.home, f)
            .map_err(io::Error::other)?
    }

    /// A listener on `addr` inside the pod (`SO_REUSEPORT`, so a new ztunnel can take over
    /// before the old one exits; `[::]` listens dual-stack).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let sock = self.in_pod(|| {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(!addr.ip().is_unspecified())?;
            }
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            s.listen(BACKLOG)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        TcpListener::from_std(sock.into())
    }

    /// A UDP socket bound to `addr` inside the pod (`SO_REUSEPORT`, as [`PodNet::listen`]).
    pub fn listen_udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let sock = self.in_pod(|| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        tokio::net::UdpSocket::from_std(sock.into())
    }

    /// An unbound UDP socket inside the pod with ztunnel's mark, for sending to `dst`.
    pub fn udp_to(&self, dst: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let sock = self.in_pod(|| {
            let s = Socket::new(Domain::for_address(dst), Type::DGRAM, None)?;
            s.set_mark(ZTUNNEL_MARK)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        tokio::net::UdpSocket::from_std(sock.into())
    }

    /// Connects to `dst` from inside the pod with ztunnel's mark.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let sock = self.in_pod(|| {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            s.set_mark(ZTUNNEL_MARK)?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            Ok(s)
        })?;
        let stream = TcpSocket::from_std_stream(sock.into()).connect(dst).await?;
        Ok(stream)
    }
}
