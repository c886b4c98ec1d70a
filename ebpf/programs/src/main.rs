//! amesh's kernel programs.
//!
//! - `amesh_connect4` / `amesh_connect6` (cgroup `connect4`/`connect6`): redirect an enrolled
//!   pod's outbound TCP connects to ztunnel's in-pod outbound listener, remembering the original
//!   destination by socket cookie.
//! - `amesh_sockops` (cgroup `sock_ops`): once the redirected socket has its source port, re-key
//!   the original destination by (pod, source address, source port), which is what ztunnel sees
//!   as the peer of the connection it accepts.
//! - `amesh_sk_lookup` (`sk_lookup`, attached per pod netns): hand connections that arrive at a
//!   pod from outside to ztunnel's HBONE (15008) or plaintext (15006) listener.
//! - DNS: the connect hooks send an enrolled pod's TCP and connected-UDP queries to port 53
//!   to ztunnel's in-pod DNS proxy (`127.0.0.1:15053` / `[::1]:15053`) instead;
//!   `amesh_sendmsg4` / `amesh_sendmsg6` (cgroup `sendmsg4`/`sendmsg6`) do the same for
//!   unconnected UDP, and `amesh_recvmsg4` / `amesh_recvmsg6` (cgroup `recvmsg4`/`recvmsg6`)
//!   make the proxy's answers read as coming from the resolver the query was sent to, which
//!   resolvers check.
//!
//! Enrollment is a map update: the programs act only on pods found in `NETNS_TO_POD` /
//! `ADDR_TO_POD`. Each entry point is a thin wrapper around a `try_*` function.
#![no_std]
#![no_main]

use amesh_ebpf_common::{
    ConnKey, DNS_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, IpKey, LISTENER_HBONE, LISTENER_PLAINTEXT,
    ListenerKey, MAX_PODS, OUTBOUND_PORT, OriginalDst, PROTO_UDP, PodConfig, PodCounters, decision,
    ip4_mapped, is_ip4_mapped,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sk_lookup, bpf_sock_ops, sk_action},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;

const AF_INET: u32 = 2;
/// Connections tracked between connect() and the source port being known, and then until
/// ztunnel reads them; LRU so abandoned entries age out.
const TRACKED_CONNECTIONS: u32 = 65536;

/// Per-pod settings, indexed by pod id.
#[map]
static POD_CONFIG: Array<PodConfig> = Array::pinned(MAX_PODS, 0);
/// Network-namespace cookie -> pod id: which sockets belong to an enrolled pod.
#[map]
static NETNS_TO_POD: HashMap<u64, u32> = HashMap::pinned(MAX_PODS, 0);
/// Pod address -> pod id: which inbound connections are for an enrolled pod.
#[map]
static ADDR_TO_POD: HashMap<IpKey, u32> = HashMap::pinned(MAX_PODS * 8, 0);
/// ztunnel's inbound listeners per pod.
#[map]
static LISTENERS: SockHash<ListenerKey> = SockHash::pinned(MAX_PODS * 2, 0);
/// Socket cookie -> original destination, from connect() until the source port is known.
#[map]
static CONNECT_ORIG: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(TRACKED_CONNECTIONS, 0);
/// (pod, client address, client port) -> original destination, read by ztunnel.
#[map]
static ORIGINAL_DST: LruHashMap<ConnKey, OriginalDst> = LruHashMap::pinned(TRACKED_CONNECTIONS, 0);
/// Socket cookie -> the resolver a UDP DNS query was sent to, for the answer's source.
#[map]
static DNS_ORIG: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(TRACKED_CONNECTIONS, 0);
/// Per-pod counters.
#[map]
static COUNTERS: PerCpuArray<PodCounters> = PerCpuArray::pinned(MAX_PODS, 0);

/// cgroup sock_addr programs return 1 to let the call proceed (0 would fail it with EPERM).
const SOCK_ADDR_PROCEED: i32 = 1;

#[inline(always)]
fn count(pod_id: u32, f: impl FnOnce(&mut PodCounters)) {
    if let Some(c) = COUNTERS.get_ptr_mut(pod_id) {
        // SAFETY: per-CPU value of a map we own; no other context touches this CPU's copy now.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
fn enrolled_pod(netns_cookie: u64) -> Option<(u32, PodConfig)> {
    // SAFETY: the value is read out of the map at once.
    let pod_id = unsafe { *NETNS_TO_POD.get(netns_cookie)? };
    let cfg = *POD_CONFIG.get(pod_id)?;
    (cfg.netns_cookie == netns_cookie).then_some((pod_id, cfg))
}

#[inline(always)]
fn is_own_address(pod_id: u32, addr: amesh_ebpf_common::Ip6) -> bool {
    // SAFETY: the value is read out of the map at once.
    matches!(unsafe { ADDR_TO_POD.get(IpKey { addr }) }, Some(id) if *id == pod_id)
}

#[cgroup_sock_addr(connect4)]
pub fn amesh_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    SOCK_ADDR_PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn amesh_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    SOCK_ADDR_PROCEED
}

/// The facts a connect hook needs, read with constant-offset loads from the context (the
/// verifier refuses loads through a context pointer that was moved, so the IPv4 and IPv6
/// hooks read their own fields in separate, inlined functions).
struct ConnectFacts {
    protocol: u32,
    dst: amesh_ebpf_common::Ip6,
    dst_port: u16,
    mark: u32,
}

/// An IPv4 hook's facts (connect4, sendmsg4).
#[inline(always)]
fn facts4(ctx: &SockAddrContext) -> ConnectFacts {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context the kernel passed; `sk` is always set for connect and
    // sendmsg hooks.
    unsafe {
        ConnectFacts {
            protocol: (*sa).protocol,
            dst: ip4_mapped((*sa).user_ip4),
            dst_port: u16::from_be((*sa).user_port as u16),
            mark: (*(*sa).__bindgen_anon_1.sk).mark,
        }
    }
}

/// An IPv6 hook's facts (connect6, sendmsg6).
#[inline(always)]
fn facts6(ctx: &SockAddrContext) -> ConnectFacts {
    let sa = ctx.sock_addr;
    // SAFETY: as in `facts4`.
    unsafe {
        ConnectFacts {
            protocol: (*sa).protocol,
            dst: [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            dst_port: u16::from_be((*sa).user_port as u16),
            mark: (*(*sa).__bindgen_anon_1.sk).mark,
        }
    }
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    let facts = facts4(ctx);
    let Some(port) = decide_connect(ctx, &facts) else {
        return Ok(());
    };
    // SAFETY: a 4-byte store to a field connect4 may rewrite.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
        (*sa).user_port = u32::from(port.to_be());
    }
    Ok(())
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    let facts = facts6(ctx);
    let Some(port) = decide_connect(ctx, &facts) else {
        return Ok(());
    };
    rewrite6(ctx, &facts.dst, port);
    Ok(())
}

/// Points an IPv6 hook's destination at ztunnel's `port` on loopback: `[::1]`, or mapped
/// 127.0.0.1 for an IPv4-mapped destination (it travels as IPv4: the IPv4 listener).
#[inline(always)]
fn rewrite6(ctx: &SockAddrContext, dst: &amesh_ebpf_common::Ip6, port: u16) {
    let sa = ctx.sock_addr;
    let loopback = if is_ip4_mapped(dst) {
        ip4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
    } else {
        [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
    };
    // SAFETY: 4-byte stores to fields connect6 and sendmsg6 may rewrite.
    unsafe {
        (*sa).user_ip6[0] = loopback[0];
        (*sa).user_ip6[1] = loopback[1];
        (*sa).user_ip6[2] = loopback[2];
        (*sa).user_ip6[3] = loopback[3];
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Returns ztunnel's port the connect must be redirected to: its DNS proxy for a DNS query,
/// else its outbound listener, after recording the original destination. If recording fails
/// the redirect still happens and ztunnel, finding no original destination, refuses the
/// connection: failing closed beats bypassing the mesh.
#[inline(always)]
fn decide_connect(ctx: &SockAddrContext, f: &ConnectFacts) -> Option<u16> {
    // SAFETY: helper called with this program's own context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let (pod_id, cfg) = enrolled_pod(netns_cookie)?;
    let connect = decision::OutboundConnect {
        protocol: f.protocol,
        mark: f.mark,
        dst: f.dst,
        dst_port: f.dst_port,
        dst_is_own: is_own_address(pod_id, f.dst),
    };
    if decision::dns(&cfg, &connect) {
        if f.protocol == PROTO_UDP {
            remember_resolver(ctx, f, pod_id);
        }
        return Some(DNS_CAPTURE_PORT);
    }
    if let decision::OutboundDecision::Pass(_) = decision::outbound(&cfg, &connect) {
        count(pod_id, |c| c.outbound_passthrough += 1);
        return None;
    }
    // SAFETY: helper called with this program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OriginalDst {
        addr: f.dst,
        port: f.dst_port,
        _pad: 0,
        pod_id,
    };
    let _ = CONNECT_ORIG.insert(socket_cookie, orig, 0);
    debug!(
        ctx,
        "pod {} outbound port {} redirected", pod_id, f.dst_port
    );
    count(pod_id, |c| c.outbound_captured += 1);
    Some(OUTBOUND_PORT)
}

/// Remembers, by socket, the resolver a UDP query was sent to (the answer is given its
/// address). Without the entry the answer reads as coming from 127.0.0.1:15053 and the
/// resolver drops it: the query fails, it never leaves the mesh.
#[inline(always)]
fn remember_resolver(ctx: &SockAddrContext, f: &ConnectFacts, pod_id: u32) {
    // SAFETY: helper called with this program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OriginalDst {
        addr: f.dst,
        port: f.dst_port,
        _pad: 0,
        pod_id,
    };
    let _ = DNS_ORIG.insert(socket_cookie, orig, 0);
}

/// For a datagram sent without connect(): the DNS decision only (other UDP is not captured).
#[inline(always)]
fn decide_send(ctx: &SockAddrContext, f: &ConnectFacts) -> bool {
    // SAFETY: helper called with this program's own context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some((pod_id, cfg)) = enrolled_pod(netns_cookie) else {
        return false;
    };
    let send = decision::OutboundConnect {
        protocol: f.protocol,
        mark: f.mark,
        dst: f.dst,
        dst_port: f.dst_port,
        dst_is_own: false,
    };
    if !decision::dns(&cfg, &send) {
        return false;
    }
    remember_resolver(ctx, f, pod_id);
    true
}

#[cgroup_sock_addr(sendmsg4)]
pub fn amesh_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let facts = facts4(&ctx);
    if decide_send(&ctx, &facts) {
        // SAFETY: 4-byte stores to fields sendmsg4 may rewrite.
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
            (*sa).user_port = u32::from(DNS_CAPTURE_PORT.to_be());
        }
    }
    SOCK_ADDR_PROCEED
}

#[cgroup_sock_addr(sendmsg6)]
pub fn amesh_sendmsg6(ctx: SockAddrContext) -> i32 {
    let facts = facts6(&ctx);
    if decide_send(&ctx, &facts) {
        rewrite6(&ctx, &facts.dst, DNS_CAPTURE_PORT);
    }
    SOCK_ADDR_PROCEED
}

/// The resolver a socket's DNS query went to, if this datagram from `src:src_port` is the
/// proxy's answer to it.
#[inline(always)]
fn resolver_of_answer(
    ctx: &SockAddrContext,
    src: &amesh_ebpf_common::Ip6,
    src_port: u16,
) -> Option<OriginalDst> {
    if !decision::dns_answer(src, src_port) {
        return None;
    }
    // SAFETY: helper called with this program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out of the map at once.
    unsafe { DNS_ORIG.get(socket_cookie).copied() }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn amesh_recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: recvmsg4 may read the datagram's source.
    let (src, port) = unsafe {
        (
            ip4_mapped((*sa).user_ip4),
            u16::from_be((*sa).user_port as u16),
        )
    };
    if let Some(orig) = resolver_of_answer(&ctx, &src, port)
        && is_ip4_mapped(&orig.addr)
    {
        // SAFETY: 4-byte stores to fields recvmsg4 may rewrite.
        unsafe {
            (*sa).user_ip4 = orig.addr[3];
            (*sa).user_port = u32::from(orig.port.to_be());
        }
    }
    // recvmsg programs must return 1.
    SOCK_ADDR_PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn amesh_recvmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: recvmsg6 may read the datagram's source.
    let (src, port) = unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            u16::from_be((*sa).user_port as u16),
        )
    };
    if let Some(orig) = resolver_of_answer(&ctx, &src, port) {
        // SAFETY: 4-byte stores to fields recvmsg6 may rewrite.
        unsafe {
            (*sa).user_ip6[0] = orig.addr[0];
            (*sa).user_ip6[1] = orig.addr[1];
            (*sa).user_ip6[2] = orig.addr[2];
            (*sa).user_ip6[3] = orig.addr[3];
            (*sa).user_port = u32::from(orig.port.to_be());
        }
    }
    SOCK_ADDR_PROCEED
}

#[sock_ops]
pub fn amesh_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    1
}

#[inline(always)]
fn try_sockops(ctx: &SockOpsContext) -> Result<(), ()> {
    // The source port is assigned just before the SYN goes out: the moment to re-key.
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return Ok(());
    }
    // SAFETY: helper called with this program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out of the map at once.
    let orig = unsafe { *CONNECT_ORIG.get(socket_cookie).ok_or(())? };
    let addr = if ctx.family() == AF_INET {
        ip4_mapped(sockops_local_ip4(ctx.ops))
    } else {
        sockops_local_ip6(ctx.ops)
    };
    let key = ConnKey {
        addr,
        pod_id: orig.pod_id,
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    let _ = ORIGINAL_DST.insert(key, orig, 0);
    let _ = CONNECT_ORIG.remove(socket_cookie);
    Ok(())
}

// The verifier refuses loads through a moved context pointer, and LLVM likes to share one
// base pointer between nearby fields; reading each field in its own small function keeps
// every load at a constant offset from the context.
#[inline(never)]
fn sockops_local_ip4(ops: *mut bpf_sock_ops) -> u32 {
    // SAFETY: `ops` is the program's context.
    unsafe { core::ptr::read_volatile(&(*ops).local_ip4) }
}

#[inline(never)]
fn sockops_local_ip6(ops: *mut bpf_sock_ops) -> amesh_ebpf_common::Ip6 {
    // SAFETY: `ops` is the program's context.
    unsafe {
        [
            core::ptr::read_volatile(&(*ops).local_ip6[0]),
            core::ptr::read_volatile(&(*ops).local_ip6[1]),
            core::ptr::read_volatile(&(*ops).local_ip6[2]),
            core::ptr::read_volatile(&(*ops).local_ip6[3]),
        ]
    }
}

/// Generates one reader per `bpf_sk_lookup` field, each its own function for the reason above.
/// A macro because the eight readers differ only in the field they load.
macro_rules! lookup_readers {
    ($($name:ident: $field:ident -> $ty:ty),* $(,)?) => {$(
        #[inline(never)]
        fn $name(l: *mut bpf_sk_lookup) -> $ty {
            // SAFETY: `l` is the program's context.
            unsafe { core::ptr::read_volatile(&(*l).$field) }
        }
    )*};
}

lookup_readers! {
    lookup_family: family -> u32,
    lookup_protocol: protocol -> u32,
    lookup_ingress_ifindex: ingress_ifindex -> u32,
    lookup_local_port: local_port -> u32,
    lookup_remote_ip4: remote_ip4 -> u32,
    lookup_local_ip4: local_ip4 -> u32,
}

#[inline(never)]
fn lookup_remote_ip6(l: *mut bpf_sk_lookup) -> amesh_ebpf_common::Ip6 {
    // SAFETY: `l` is the program's context.
    unsafe {
        [
            core::ptr::read_volatile(&(*l).remote_ip6[0]),
            core::ptr::read_volatile(&(*l).remote_ip6[1]),
            core::ptr::read_volatile(&(*l).remote_ip6[2]),
            core::ptr::read_volatile(&(*l).remote_ip6[3]),
        ]
    }
}

#[inline(never)]
fn lookup_local_ip6(l: *mut bpf_sk_lookup) -> amesh_ebpf_common::Ip6 {
    // SAFETY: `l` is the program's context.
    unsafe {
        [
            core::ptr::read_volatile(&(*l).local_ip6[0]),
            core::ptr::read_volatile(&(*l).local_ip6[1]),
            core::ptr::read_volatile(&(*l).local_ip6[2]),
            core::ptr::read_volatile(&(*l).local_ip6[3]),
        ]
    }
}

#[sk_lookup]
pub fn amesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    try_sk_lookup(&ctx).unwrap_or(sk_action::SK_PASS)
}

#[inline(always)]
fn try_sk_lookup(ctx: &SkLookupContext) -> Result<u32, ()> {
    let l = ctx.lookup;
    let family = lookup_family(l);
    let (src, dst) = if family == AF_INET {
        (
            ip4_mapped(lookup_remote_ip4(l)),
            ip4_mapped(lookup_local_ip4(l)),
        )
    } else {
        (lookup_remote_ip6(l), lookup_local_ip6(l))
    };
    let (protocol, ifindex, dst_port) = (
        lookup_protocol(l),
        lookup_ingress_ifindex(l),
        lookup_local_port(l) as u16,
    );
    let facts = decision::InboundLookup {
        protocol,
        ingress_ifindex: ifindex,
        src,
        src_is_own: false,
        dst_port,
    };
    // This program runs only in enrolled pods' namespaces; the destination address says which
    // pod (sk_lookup has no netns cookie). An address registered for no pod is refused unless
    // the pod is talking to itself.
    // SAFETY: the value is read out of the map at once.
    let Some(pod_id) = (unsafe { ADDR_TO_POD.get(IpKey { addr: dst }) }).copied() else {
        return Ok(match decision::inbound_unregistered(&facts, &dst) {
            decision::InboundDecision::Refuse => sk_action::SK_DROP,
            _ => sk_action::SK_PASS,
        });
    };
    let cfg = *POD_CONFIG.get(pod_id).ok_or(())?;
    let lookup = decision::InboundLookup {
        src_is_own: is_own_address(pod_id, src),
        ..facts
    };
    let kind = match decision::inbound(&cfg, &lookup) {
        decision::InboundDecision::Pass(_) => {
            count(pod_id, |c| c.inbound_passthrough += 1);
            return Ok(sk_action::SK_PASS);
        }
        decision::InboundDecision::Refuse => {
            count(pod_id, |c| c.inbound_refused += 1);
            return Ok(sk_action::SK_DROP);
        }
        decision::InboundDecision::Hbone => LISTENER_HBONE,
        decision::InboundDecision::Plaintext => LISTENER_PLAINTEXT,
    };
    let key = ListenerKey { pod_id, kind };
    if LISTENERS.redirect_sk_lookup(ctx, key, 0).is_err() {
        // ztunnel has not registered this pod's listener (yet): refuse rather than let the
        // connection reach the app unprotected.
        count(pod_id, |c| c.inbound_refused += 1);
        debug!(
            ctx,
            "pod {} inbound port {} refused: no listener", pod_id, dst_port
        );
        return Ok(sk_action::SK_DROP);
    }
    count(pod_id, |c| {
        if kind == LISTENER_HBONE {
            c.inbound_hbone += 1
        } else {
            c.inbound_plaintext += 1
        }
    });
    debug!(
        ctx,
        "pod {} inbound port {} to listener {}",
        pod_id,
        dst_port,
        if kind == LISTENER_HBONE {
            15008u16
        } else {
            INBOUND_PLAINTEXT_PORT
        }
    );
    Ok(sk_action::SK_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel programs are dual licensed so that GPL-only helpers stay available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
