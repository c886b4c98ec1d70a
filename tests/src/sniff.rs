//! Packet capture on the underlay: what actually crossed the wire between pods.

use crate::BedError;
use amesh_sys::{netns::Netns, packet::PacketSocket};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Frames kept at most, so a long transfer cannot exhaust memory.
const MAX_BYTES: usize = 256 << 20;

/// A running capture; [`Sniffer::stop`] returns what it saw.
#[derive(Debug)]
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    /// Starts capturing on `ifname` inside `netns`; returns once the socket is bound, so
    /// nothing sent afterwards is missed.
    pub fn start(netns: &Netns, ifname: &str) -> Result<Self, BedError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ifname = ifname.to_string();
        let fd = netns
            .try_clone_fd()
            .map_err(BedError::io("duplicating netns fd"))?;
        let thread = std::thread::spawn(move || {
            if let Err(e) = amesh_sys::netns::enter(std::os::fd::AsFd::as_fd(&fd)) {
                let _ = ready_tx.send(Err(e));
                return Vec::new();
            }
            let sock = match PacketSocket::bind(&ifname, Duration::from_millis(20)) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Vec::new();
                }
            };
            let mut frames = Vec::new();
            let mut total = 0;
            let mut buf = vec![0u8; 65536];
            // Keep reading until asked to stop and the socket has gone quiet.
            loop {
                match sock.recv(&mut buf) {
                    Ok(Some(n)) if total + n <= MAX_BYTES => {
                        total += n;
                        frames.push(buf[..n].to_vec());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) if flag.load(Ordering::Relaxed) => break,
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            frames
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(BedError::io("starting packet capture")(e)),
            Err(_) => Err(BedError::io("starting packet capture")(
                std::io::Error::other("capture thread died"),
            )),
        }
    }

    /// Stops and returns the TCP segments seen.
    pub fn stop(mut self) -> Vec<TcpSegment> {
        self.stop.store(true, Ordering::Relaxed);
        let frames = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        frames.iter().filter_map(|f| TcpSegment::parse(f)).collect()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TCP segment from an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags byte (SYN = 0x02, ACK = 0x10, FIN = 0x01, RST = 0x04).
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl TcpSegment {
    pub const SYN: u8 = 0x02;

    /// Parses Ethernet II + IPv4/IPv6 (no extension headers) + TCP; `None` for anything else.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(14..)?;
        let (src, dst, tcp) = match ethertype {
            0x0800 => {
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                if *ip.get(9)? != 6 {
                    return None;
                }
                let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (
                    IpAddr::V4(Ipv4Addr::from(s)),
                    IpAddr::V4(Ipv4Addr::from(d)),
                    ip.get(ihl..total)?,
                )
            }
            0x86dd => {
                let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
                if *ip.get(6)? != 6 {
                    return None;
                }
                let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                (
                    IpAddr::V6(Ipv6Addr::from(s)),
                    IpAddr::V6(Ipv6Addr::from(d)),
                    ip.get(40..40 + len)?,
                )
            }
            _ => return None,
        };
        let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
        let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
        let offset = usize::from(tcp.get(12)? >> 4) * 4;
        Some(Self {
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
            flags: *tcp.get(13)?,
            payload: tcp.get(offset..)?.to_vec(),
        })
    }

    pub fn is_syn(&self) -> bool {
        self.flags & Self::SYN != 0 && self.flags & 0x10 == 0
    }
}

/// True when `needle` appears in any segment's payload.
pub fn any_payload_contains(segments: &[TcpSegment], needle: &[u8]) -> bool {
    segments
        .iter()
        .any(|s| s.payload.windows(needle.len()).any(|w| w == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_tcp_frame() {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let payload = b"hello";
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        let total = (ip.len() + tcp.len() + payload.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend(ip);
        f.extend(tcp);
        f.extend(payload);
        f.extend([0u8; 6]); // Ethernet padding must not count as payload.
        let s = TcpSegment::parse(&f).expect("tcp");
        assert_eq!(s.src, "10.0.0.1:1234".parse().expect("addr"));
        assert_eq!(s.dst, "10.0.0.2:8080".parse().expect("addr"));
        assert_eq!(s.payload, payload);
        assert!(!s.is_syn());
        assert!(any_payload_contains(&[s], b"ell"));
    }

    #[test]
    fn ignores_non_tcp() {
        assert_eq!(TcpSegment::parse(&[0u8; 10]), None);
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(TcpSegment::parse(&arp), None);
    }
}
