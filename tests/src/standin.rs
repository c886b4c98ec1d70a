//! Stand-ins for ztunnel's in-pod listeners, for tests and the demo: they accept what the
//! capture programs deliver and answer like `amesh-probe serve`, so a client can see where its
//! connection landed. The outbound stand-in also reports the original destination it
//! recovered from the capture maps (`orig=`), the way ztunnel does.

use amesh_ebpf_loader::{CaptureMaps, PinLayout};
use socket2::{Domain, Socket, Type};
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{BedError, Pod};

/// A stand-in for one of ztunnel's listeners: accepts, answers like `amesh-probe serve`, and
/// for the outbound listener adds `orig=` (the original destination read from the maps).
#[derive(Debug)]
pub struct StandIn {
    pub socket: Arc<Socket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the outbound stand-in uses to recover original destinations.
#[derive(Debug)]
pub struct OrigLookup {
    pub maps: Mutex<CaptureMaps>,
    pub pod_id: u32,
}

impl StandIn {
    /// Binds `addr` inside `pod` (dual-stack when it is `[::]`) and serves until dropped.
    pub fn start(
        pod: &Pod,
        name: &str,
        addr: SocketAddr,
        orig: Option<Arc<OrigLookup>>,
    ) -> Result<Self, BedError> {
        let socket = pod
            .run(|| -> std::io::Result<Socket> {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                if addr.is_ipv6() {
                    s.set_only_v6(!addr.ip().is_unspecified())?;
                }
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })?
            .map_err(BedError::io(format!(
                "binding {addr} in pod {}",
                pod.name()
            )))?;
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag, name) = (socket.clone(), stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let Ok(listener) = s.try_clone().map(TcpListener::from) else {
                return;
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let (name, orig) = (name.clone(), orig.clone());
                        std::thread::spawn(move || answer(conn, peer, &name, orig.as_deref()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Self {
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

impl AsFd for StandIn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, peer: SocketAddr, name: &str, orig: Option<&OrigLookup>) {
    let _ = conn.set_nonblocking(false);
    let local = conn
        .local_addr()
        .map(canonical)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let orig = orig.map(|o| {
        let found = o
            .maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_original_dst(o.pod_id, canonical(peer));
        match found {
            Ok(Some(a)) => a.to_string(),
            Ok(None) => "none".to_string(),
            Err(e) => format!("error:{e}"),
        }
    });
    let mut line = String::new();
    let _ = BufReader::new(&conn).read_line(&mut line);
    let orig = orig.map(|o| format!(" orig={o}")).unwrap_or_default();
    let _ = (&conn).write_all(
        format!(
            "served-by={name}{orig} local={local} line={}\n",
            line.trim_end()
        )
        .as_bytes(),
    );
}

/// IPv4-mapped addresses (from dual-stack sockets) as plain IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Opens the capture maps from their pins the way ztunnel does.
pub fn orig_lookup(
    pin_root: &Path,
    pod_id: u32,
) -> Result<Arc<OrigLookup>, amesh_ebpf_loader::CaptureError> {
    let maps = CaptureMaps::open_pinned(&PinLayout::new(pin_root))?;
    Ok(Arc::new(OrigLookup {
        maps: Mutex::new(maps),
        pod_id,
    }))
}
