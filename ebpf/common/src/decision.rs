//! What the capture programs do with a connection: pure functions, run by the kernel programs
//! and unit-tested on the host.

use crate::{
    DNS_PORT, INBOUND_HBONE_PORT, Ip6, POD_FLAG_BYPASS_INBOUND, POD_FLAG_NO_DNS_CAPTURE,
    PROBE_SOURCE_V4, PROBE_SOURCE_V6, PROTO_TCP, PROTO_UDP, PodConfig, ZTUNNEL_MARK,
    ZTUNNEL_MARK_MASK, ip_eq, is_loopback, is_unspecified,
};

/// Why a connection of an enrolled pod is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    NotTcp,
    ZtunnelMark,
    Loopback,
    OwnAddress,
    ExcludedPort,
    ProbeSource,
    BypassInbound,
}

/// Outcome for an outbound `connect()` of an enrolled pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundDecision {
    /// Rewrite the destination to the in-pod outbound listener.
    Redirect,
    Pass(PassReason),
}

/// Facts about one outbound `connect()` the program reads from its context.
#[derive(Clone, Copy, Debug)]
pub struct OutboundConnect {
    pub protocol: u32,
    pub mark: u32,
    pub dst: Ip6,
    /// Host byte order.
    pub dst_port: u16,
    /// The destination is one of this pod's own addresses.
    pub dst_is_own: bool,
}

/// Decides whether an enrolled pod's outbound connect is redirected to ztunnel.
#[inline(always)]
pub fn outbound(cfg: &PodConfig, c: &OutboundConnect) -> OutboundDecision {
    if c.protocol != PROTO_TCP {
        return OutboundDecision::Pass(PassReason::NotTcp);
    }
    if c.mark & ZTUNNEL_MARK_MASK == ZTUNNEL_MARK {
        return OutboundDecision::Pass(PassReason::ZtunnelMark);
    }
    if is_loopback(&c.dst) || is_unspecified(&c.dst) {
        return OutboundDecision::Pass(PassReason::Loopback);
    }
    if c.dst_is_own {
        return OutboundDecision::Pass(PassReason::OwnAddress);
    }
    if cfg.excludes_outbound(c.dst_port) {
        return OutboundDecision::Pass(PassReason::ExcludedPort);
    }
    OutboundDecision::Redirect
}

/// Whether an enrolled pod's connect or send is a DNS query for ztunnel's in-pod proxy
/// (15053), as istio-cni's rules choose them: UDP or TCP to port 53, not marked by ztunnel
/// (its own queries), not to a loopback resolver (one in the pod itself), the pod not opted
/// out and port 53 not excluded. Checked before [`outbound`], which would send TCP to 15001.
#[inline(always)]
pub fn dns(cfg: &PodConfig, c: &OutboundConnect) -> bool {
    c.dst_port == DNS_PORT
        && (c.protocol == PROTO_UDP || c.protocol == PROTO_TCP)
        && c.mark & ZTUNNEL_MARK_MASK != ZTUNNEL_MARK
        && !is_loopback(&c.dst)
        && !is_unspecified(&c.dst)
        && cfg.flags & POD_FLAG_NO_DNS_CAPTURE == 0
        && !cfg.excludes_outbound(DNS_PORT)
}

/// Whether a datagram an enrolled pod's socket receives from `src:src_port` is an answer of
/// ztunnel's DNS proxy, whose source must read as the resolver the query was sent to.
#[inline(always)]
pub fn dns_answer(src: &Ip6, src_port: u16) -> bool {
    src_port == crate::DNS_CAPTURE_PORT && is_loopback(src)
}

/// Outcome for a connection arriving at an enrolled pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundDecision {
    /// Give it to ztunnel's HBONE listener (15008).
    Hbone,
    /// Give it to ztunnel's plaintext listener (15006).
    Plaintext,
    Pass(PassReason),
    /// Drop it: it would otherwise reach the app around ztunnel.
    Refuse,
}

/// Facts about one inbound socket lookup the program reads from its context.
#[derive(Clone, Copy, Debug)]
pub struct InboundLookup {
    pub protocol: u32,
    pub ingress_ifindex: u32,
    pub src: Ip6,
    /// The source is one of this pod's own addresses: the pod talking to itself. (For a pod
    /// reaching its own IP the kernel reports eth0, not lo, as the ingress interface.)
    pub src_is_own: bool,
    /// Host byte order.
    pub dst_port: u16,
}

/// Decides which of ztunnel's listeners, if any, gets an inbound connection.
#[inline(always)]
pub fn inbound(cfg: &PodConfig, l: &InboundLookup) -> InboundDecision {
    if l.protocol != PROTO_TCP {
        return InboundDecision::Pass(PassReason::NotTcp);
    }
    // Connections made inside the pod (the app to itself, ztunnel to the app) use loopback.
    if l.ingress_ifindex == crate::LOOPBACK_IFINDEX || is_loopback(&l.src) || l.src_is_own {
        return InboundDecision::Pass(PassReason::Loopback);
    }
    if cfg.flags & POD_FLAG_BYPASS_INBOUND != 0 {
        return InboundDecision::Pass(PassReason::BypassInbound);
    }
    if ip_eq(&l.src, &PROBE_SOURCE_V4) || ip_eq(&l.src, &PROBE_SOURCE_V6) {
        return InboundDecision::Pass(PassReason::ProbeSource);
    }
    if l.dst_port == INBOUND_HBONE_PORT {
        return InboundDecision::Hbone;
    }
    if cfg.excludes_inbound(l.dst_port) {
        return InboundDecision::Pass(PassReason::ExcludedPort);
    }
    InboundDecision::Plaintext
}

/// Decides for a connection that arrives in an enrolled pod's namespace at an address that
/// is not registered for any pod (an address added later, an IPv6 link-local one...). Only
/// the pod talking to itself passes; anything else is refused rather than let through.
#[inline(always)]
pub fn inbound_unregistered(l: &InboundLookup, dst: &Ip6) -> InboundDecision {
    if l.protocol != PROTO_TCP {
        return InboundDecision::Pass(PassReason::NotTcp);
    }
    if l.ingress_ifindex == crate::LOOPBACK_IFINDEX || is_loopback(&l.src) || ip_eq(&l.src, dst) {
        return InboundDecision::Pass(PassReason::Loopback);
    }
    InboundDecision::Refuse
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip4_mapped;

    #[test]
    fn dns_is_captured_as_istio_cni_chooses_it() {
        let cfg = PodConfig::default();
        let q = |protocol, dst, port, mark| OutboundConnect {
            protocol,
            mark,
            dst,
            dst_port: port,
            dst_is_own: false,
        };
        let resolver = v4(10, 96, 0, 10);
        assert!(dns(&cfg, &q(PROTO_UDP, resolver, 53, 0)));
        assert!(dns(&cfg, &q(PROTO_TCP, resolver, 53, 0)));
        assert!(dns(
            &cfg,
            &q(
                PROTO_UDP,
                v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]),
                53,
                0
            )
        ));
        // Not DNS, ztunnel's own query, a resolver in the pod, nowhere.
        assert!(!dns(&cfg, &q(PROTO_UDP, resolver, 5353, 0)));
        assert!(!dns(&cfg, &q(PROTO_UDP, resolver, 53, ZTUNNEL_MARK)));
        assert!(!dns(
            &cfg,
            &q(PROTO_UDP, resolver, 53, 0x1000 | ZTUNNEL_MARK)
        ));
        assert!(!dns(&cfg, &q(PROTO_UDP, v4(127, 0, 0, 53), 53, 0)));
        assert!(!dns(&cfg, &q(PROTO_UDP, v4(0, 0, 0, 0), 53, 0)));
        assert!(!dns(&cfg, &q(132, resolver, 53, 0)), "SCTP is not DNS");
        // Opted out, or port 53 excluded.
        let out = PodConfig {
            flags: POD_FLAG_NO_DNS_CAPTURE,
            ..cfg
        };
        assert!(!dns(&out, &q(PROTO_UDP, resolver, 53, 0)));
        let mut excluded = cfg;
        excluded.excluded_outbound_ports[0] = 53;
        assert!(!dns(&excluded, &q(PROTO_TCP, resolver, 53, 0)));
        // Bypassing inbound capture changes nothing for DNS.
        let bypass = PodConfig {
            flags: POD_FLAG_BYPASS_INBOUND,
            ..cfg
        };
        assert!(dns(&bypass, &q(PROTO_UDP, resolver, 53, 0)));
    }

    #[test]
    fn only_the_proxys_answers_are_given_the_resolvers_address() {
        assert!(dns_answer(&v4(127, 0, 0, 1), 15053));
        assert!(dns_answer(
            &[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
            15053
        ));
        assert!(!dns_answer(&v4(127, 0, 0, 1), 53));
        assert!(!dns_answer(&v4(10, 96, 0, 10), 15053));
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Ip6 {
        ip4_mapped(u32::from_ne_bytes([a, b, c, d]))
    }

    fn v6(bytes: [u8; 16]) -> Ip6 {
        let mut out = [0u32; 4];
        for (i, w) in out.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]);
        }
        out
    }

    fn cfg() -> PodConfig {
        PodConfig {
            netns_cookie: 7,
            pod_id: 3,
            flags: 0,
            excluded_outbound_ports: [9000, 0, 0, 0, 0, 0, 0, 0],
            excluded_inbound_ports: [9100, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    fn connect(dst: Ip6, port: u16) -> OutboundConnect {
        OutboundConnect {
            protocol: PROTO_TCP,
            mark: 0,
            dst,
            dst_port: port,
            dst_is_own: false,
        }
    }

    #[test]
    fn outbound_table() {
        let other = v4(10, 0, 0, 9);
        let cases: &[(&str, OutboundConnect, OutboundDecision)] = &[
            (
                "tcp to another pod",
                connect(other, 8080),
                OutboundDecision::Redirect,
            ),
            (
                "ipv6 to another pod",
                connect(v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]), 80),
                OutboundDecision::Redirect,
            ),
            (
                "udp",
                OutboundConnect {
                    protocol: 17,
                    ..connect(other, 53)
                },
                OutboundDecision::Pass(PassReason::NotTcp),
            ),
            (
                "ztunnel mark",
                OutboundConnect {
                    mark: 0x539,
                    ..connect(other, 8080)
                },
                OutboundDecision::Pass(PassReason::ZtunnelMark),
            ),
            (
                "ztunnel mark with high bits set (masked)",
                OutboundConnect {
                    mark: 0x7000_0539,
                    ..connect(other, 8080)
                },
                OutboundDecision::Pass(PassReason::ZtunnelMark),
            ),
            (
                "another mark",
                OutboundConnect {
                    mark: 0x538,
                    ..connect(other, 8080)
                },
                OutboundDecision::Redirect,
            ),
            (
                "ipv4 loopback",
                connect(v4(127, 0, 0, 1), 8080),
                OutboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "127/8",
                connect(v4(127, 9, 9, 9), 8080),
                OutboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "ipv6 loopback",
                connect(v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 80),
                OutboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "0.0.0.0",
                connect(v4(0, 0, 0, 0), 80),
                OutboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "::",
                connect([0; 4], 80),
                OutboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "own address",
                OutboundConnect {
                    dst_is_own: true,
                    ..connect(other, 8080)
                },
                OutboundDecision::Pass(PassReason::OwnAddress),
            ),
            (
                "excluded port",
                connect(other, 9000),
                OutboundDecision::Pass(PassReason::ExcludedPort),
            ),
            (
                "port 0 is not an exclusion",
                connect(other, 0),
                OutboundDecision::Redirect,
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(outbound(&cfg(), c), *want, "case {name}");
        }
    }

    fn lookup(src: Ip6, port: u16) -> InboundLookup {
        InboundLookup {
            protocol: PROTO_TCP,
            ingress_ifindex: 2,
            src,
            src_is_own: false,
            dst_port: port,
        }
    }

    #[test]
    fn inbound_table() {
        let peer = v4(10, 0, 0, 9);
        let bypass = PodConfig {
            flags: POD_FLAG_BYPASS_INBOUND,
            ..cfg()
        };
        let cases: &[(&str, PodConfig, InboundLookup, InboundDecision)] = &[
            (
                "app port",
                cfg(),
                lookup(peer, 8080),
                InboundDecision::Plaintext,
            ),
            (
                "hbone port",
                cfg(),
                lookup(peer, 15008),
                InboundDecision::Hbone,
            ),
            (
                "udp",
                cfg(),
                InboundLookup {
                    protocol: 17,
                    ..lookup(peer, 53)
                },
                InboundDecision::Pass(PassReason::NotTcp),
            ),
            (
                "arrives on loopback",
                cfg(),
                InboundLookup {
                    ingress_ifindex: 1,
                    ..lookup(v4(10, 0, 0, 2), 8080)
                },
                InboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "loopback source",
                cfg(),
                lookup(v4(127, 0, 0, 1), 8080),
                InboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "own address as source",
                cfg(),
                InboundLookup {
                    src_is_own: true,
                    ..lookup(v4(10, 0, 0, 2), 8080)
                },
                InboundDecision::Pass(PassReason::Loopback),
            ),
            (
                "probe source v4",
                cfg(),
                lookup(PROBE_SOURCE_V4, 8080),
                InboundDecision::Pass(PassReason::ProbeSource),
            ),
            (
                "probe source v6",
                cfg(),
                lookup(PROBE_SOURCE_V6, 8080),
                InboundDecision::Pass(PassReason::ProbeSource),
            ),
            (
                "excluded port",
                cfg(),
                lookup(peer, 9100),
                InboundDecision::Pass(PassReason::ExcludedPort),
            ),
            (
                "bypass flag",
                bypass,
                lookup(peer, 8080),
                InboundDecision::Pass(PassReason::BypassInbound),
            ),
        ];
        for (name, c, l, want) in cases {
            assert_eq!(inbound(c, l), *want, "case {name}");
        }
    }

    #[test]
    fn unregistered_destinations_are_refused_unless_local() {
        let dst = v4(10, 0, 0, 7);
        let l = lookup(v4(10, 0, 0, 9), 8080);
        assert_eq!(inbound_unregistered(&l, &dst), InboundDecision::Refuse);
        assert_eq!(
            inbound_unregistered(&InboundLookup { protocol: 17, ..l }, &dst),
            InboundDecision::Pass(PassReason::NotTcp)
        );
        assert_eq!(
            inbound_unregistered(
                &InboundLookup {
                    ingress_ifindex: 1,
                    ..l
                },
                &dst
            ),
            InboundDecision::Pass(PassReason::Loopback)
        );
        assert_eq!(
            inbound_unregistered(&InboundLookup { src: dst, ..l }, &dst),
            InboundDecision::Pass(PassReason::Loopback)
        );
    }

    #[test]
    fn address_helpers() {
        assert!(crate::is_ip4_mapped(&v4(10, 1, 2, 3)));
        assert!(!crate::is_ip4_mapped(&v6([0xfd; 16])));
        assert!(ip_eq(&PROBE_SOURCE_V4, &v4(169, 254, 7, 127)));
        assert!(ip_eq(
            &PROBE_SOURCE_V6,
            &v6([
                0xfd, 0x16, 0x92, 0x54, 0x71, 0x27, 0x13, 0x37, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff
            ])
        ));
    }
}
