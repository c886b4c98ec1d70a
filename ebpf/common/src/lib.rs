//! Types shared by amesh's kernel programs and user space, and the capture decisions.
//!
//! Everything here is `no_std`, `#[repr(C)]` and padding-free (explicit padding fields, size
//! assertions next to each type) because the same bytes are read by the kernel programs and by
//! the user-space loader. The decision functions are pure so that the exact logic the kernel
//! runs is unit-tested on the host too.
//!
//! Addresses are kept as [`Ip6`]: four `u32` words holding the 16 bytes of an IPv6 address in
//! network order, the layout the kernel uses for `user_ip6` / `local_ip6`. IPv4 addresses are
//! stored IPv4-mapped (`::ffff:a.b.c.d`) so that one key type serves both families.
#![no_std]
// Only the `aya::Pod` impls below need `unsafe`.
#![deny(unsafe_code)]

pub mod decision;

pub use decision::{InboundDecision, OutboundDecision, PassReason};

/// Port of ztunnel's in-pod outbound listener (connections are redirected to it).
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of ztunnel's in-pod inbound plaintext listener.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Port of ztunnel's in-pod inbound HBONE (mTLS) listener.
pub const INBOUND_HBONE_PORT: u16 = 15008;

/// The DNS port: an enrolled pod's queries to it go to ztunnel's DNS proxy.
pub const DNS_PORT: u16 = 53;
/// Port of ztunnel's in-pod DNS proxy (UDP and TCP, on `127.0.0.1` and `[::1]`), Istio's.
pub const DNS_CAPTURE_PORT: u16 = 15053;

/// `SO_MARK` ztunnel puts on its own sockets; marked sockets are never captured (as Istio).
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Mask applied to a socket mark before comparing it with [`ZTUNNEL_MARK`].
pub const ZTUNNEL_MARK_MASK: u32 = 0xfff;

/// Highest number of pods one node can enroll (pod ids are indexes below this).
pub const MAX_PODS: u32 = 1024;
/// Ports per direction a pod may exclude from capture.
pub const MAX_EXCLUDED_PORTS: usize = 8;

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u32 = 17;
/// Loopback interface index: connections arriving on it come from inside the pod.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// An IPv6 address (IPv4 ones mapped) as four words whose bytes are in network order.
pub type Ip6 = [u32; 4];

const fn word(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// The kubelet probe source Istio SNATs health checks to (IPv4, mapped): never captured.
pub const PROBE_SOURCE_V4: Ip6 = [0, 0, word([0, 0, 0xff, 0xff]), word([169, 254, 7, 127])];
/// The kubelet probe source for IPv6 (`fd16:9254:7127:1337:ffff:ffff:ffff:ffff`).
pub const PROBE_SOURCE_V6: Ip6 = [
    word([0xfd, 0x16, 0x92, 0x54]),
    word([0x71, 0x27, 0x13, 0x37]),
    word([0xff, 0xff, 0xff, 0xff]),
    word([0xff, 0xff, 0xff, 0xff]),
];

/// Builds the IPv4-mapped form of an IPv4 address given as a network-order word.
#[inline(always)]
pub const fn ip4_mapped(ip4_be: u32) -> Ip6 {
    [0, 0, word([0, 0, 0xff, 0xff]), ip4_be]
}

/// True for `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn is_ip4_mapped(ip: &Ip6) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == word([0, 0, 0xff, 0xff])
}

/// Word-wise equality (no `memcmp`, which does not exist for the BPF target).
#[inline(always)]
pub const fn ip_eq(a: &Ip6, b: &Ip6) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// Loopback: `::1` or any `127.0.0.0/8` (mapped).
#[inline(always)]
pub const fn is_loopback(ip: &Ip6) -> bool {
    if is_ip4_mapped(ip) {
        return ip[3].to_ne_bytes()[0] == 127;
    }
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == word([0, 0, 0, 1])
}

/// Unspecified: `::` or `0.0.0.0` (mapped); connecting there reaches the local host.
#[inline(always)]
pub const fn is_unspecified(ip: &Ip6) -> bool {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0) || (is_ip4_mapped(ip) && ip[3] == 0)
}

/// Per-pod capture settings, value of the `POD_CONFIG` array (indexed by pod id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodConfig {
    /// Cookie of the pod's network namespace (0 = slot unused).
    pub netns_cookie: u64,
    /// Index of this pod in the per-pod arrays.
    pub pod_id: u32,
    /// `POD_FLAG_*` bits.
    pub flags: u32,
    /// Destination ports the pod's outbound connections keep (0 = empty slot).
    pub excluded_outbound_ports: [u16; MAX_EXCLUDED_PORTS],
    /// Local ports inbound connections keep (0 = empty slot).
    pub excluded_inbound_ports: [u16; MAX_EXCLUDED_PORTS],
}
const _: () = assert!(core::mem::size_of::<PodConfig>() == 48);

/// Inbound connections are not captured (Istio's `ambient.istio.io/bypass-inbound-capture`).
pub const POD_FLAG_BYPASS_INBOUND: u32 = 1;
/// The pod's DNS is not sent to ztunnel's proxy (Istio's `ambient.istio.io/dns-capture:
/// "false"`, or DNS capture switched off mesh-wide).
pub const POD_FLAG_NO_DNS_CAPTURE: u32 = 2;

impl PodConfig {
    #[inline(always)]
    fn port_in(ports: &[u16; MAX_EXCLUDED_PORTS], port: u16) -> bool {
        let mut i = 0;
        while i < MAX_EXCLUDED_PORTS {
            if ports[i] != 0 && ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    /// True when outbound connections to `port` must not be captured.
    #[inline(always)]
    pub fn excludes_outbound(&self, port: u16) -> bool {
        Self::port_in(&self.excluded_outbound_ports, port)
    }

    /// True when inbound connections to `port` must not be captured.
    #[inline(always)]
    pub fn excludes_inbound(&self, port: u16) -> bool {
        Self::port_in(&self.excluded_inbound_ports, port)
    }
}

/// Key of the `ADDR_TO_POD` map: one of a pod's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    pub addr: Ip6,
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

/// Which of a pod's inbound listeners a `LISTENERS` entry holds.
pub const LISTENER_HBONE: u32 = 0;
/// The plaintext inbound listener (15006).
pub const LISTENER_PLAINTEXT: u32 = 1;

/// Key of the `LISTENERS` sockhash: a pod's inbound listener of one kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub pod_id: u32,
    /// `LISTENER_HBONE` or `LISTENER_PLAINTEXT`.
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);

/// The destination an outbound connection asked for before it was redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    pub addr: Ip6,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    /// The pod whose socket made the connection.
    pub pod_id: u32,
}
const _: () = assert!(core::mem::size_of::<OriginalDst>() == 24);

/// Key of the `ORIGINAL_DST` map: the redirected connection as ztunnel's listener sees its
/// peer (the client socket's local address and port) within one pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub addr: Ip6,
    pub pod_id: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 24);

/// Per-pod counters (a per-CPU array indexed by pod id; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    /// Outbound TCP connects redirected to the outbound listener.
    pub outbound_captured: u64,
    /// Outbound TCP connects of an enrolled pod left alone (mark, loopback, own IP, excluded).
    pub outbound_passthrough: u64,
    /// Inbound connections assigned to the HBONE listener.
    pub inbound_hbone: u64,
    /// Inbound connections assigned to the plaintext listener.
    pub inbound_plaintext: u64,
    /// Inbound connections left alone (excluded port, probe source, bypass flag).
    pub inbound_passthrough: u64,
    /// Inbound connections refused because ztunnel's listener was not registered (fail closed).
    pub inbound_refused: u64,
}
const _: () = assert!(core::mem::size_of::<PodCounters>() == 48);

impl PodCounters {
    /// Adds `other` into `self` (user space sums per-CPU values with this).
    pub fn add(&mut self, other: &PodCounters) {
        self.outbound_captured += other.outbound_captured;
        self.outbound_passthrough += other.outbound_passthrough;
        self.inbound_hbone += other.inbound_hbone;
        self.inbound_plaintext += other.inbound_plaintext;
        self.inbound_passthrough += other.inbound_passthrough;
        self.inbound_refused += other.inbound_refused;
    }
}

#[cfg(feature = "user")]
#[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod user {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers, and have no
    // padding (asserted by size next to each type), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::PodConfig {}
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::PodCounters {}
}
