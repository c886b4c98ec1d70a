//! Where the waypoint's data-path sockets live: its own network namespace (a waypoint pod,
//! the usual case), or with `--netns` a pod's namespace entered only to make each socket
//! (the test bed runs it so, as ztunnel serves pods from outside them). Control-plane and
//! admin sockets always stay in the process's own namespace.

use amesh_sys::netns::Netns;
use socket2::{Domain, Socket, Type};
use std::{io, net::SocketAddr, path::Path};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const BACKLOG: i32 = 1024;

#[derive(Debug, Default)]
pub struct Net {
    netns: Option<Netns>,
}

impl Net {
    pub fn new(netns: Option<&Path>) -> io::Result<Self> {
        Ok(Self {
            netns: netns
                .map(Netns::open)
                .transpose()
                .map_err(io::Error::other)?,
        })
    }

    fn make<R: Send>(&self, f: impl FnOnce() -> io::Result<R> + Send) -> io::Result<R> {
        match &self.netns {
            None => f(),
            Some(ns) => ns.run(f).map_err(io::Error::other)?,
        }
    }

    /// A listener on `addr` (`[::]` listens dual-stack).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let sock = self.make(|| {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(!addr.ip().is_unspecified())?;
            }
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(BACKLOG)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        TcpListener::from_std(sock.into())
    }

    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let sock = self.make(|| {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            Ok(s)
        })?;
        TcpSocket::from_std_stream(sock.into()).connect(dst).await
    }
}
