//! Outbound capture: an enrolled pod's connects land on its in-pod outbound listener and the
//! original destination is recovered for exactly that connection.

use crate::support::*;
use amesh_ebpf_loader::EnrollRequest;
use amesh_testbed::{probe::reply_field, sniff};
use std::net::SocketAddr;

#[test]
fn connects_to_other_pods_land_on_the_outbound_listener_v4_and_v6() {
    let mut bed = Bed::new(&["a", "b"]);
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let b = bed.pod("b");
    // Nothing listens on b:8080: only a redirect can produce a reply.
    for target in [v4(b, APP_PORT), v6(b, APP_PORT)] {
        let c = connect_one(bed.pod("a"), &[], target);
        assert_eq!(served_by(&c), "outbound", "{target}: {c:?}");
        assert_eq!(c.orig(), Some(target.to_string().as_str()), "{c:?}");
        let listener: SocketAddr = if target.is_ipv4() {
            "127.0.0.1:15001"
        } else {
            "[::1]:15001"
        }
        .parse()
        .expect("addr");
        assert_eq!(served_local(&c), listener);
    }
    // An IPv6 socket dialing an IPv4-mapped address travels as IPv4: it lands on the IPv4
    // listener and the original destination reads as the IPv4 address.
    let mapped: SocketAddr = format!("[::ffff:{}]:{APP_PORT}", b.ipv4())
        .parse()
        .expect("addr");
    let c = connect_one(bed.pod("a"), &[], mapped);
    assert_eq!(served_by(&c), "outbound");
    assert_eq!(
        c.orig(),
        Some(v4(b, APP_PORT).to_string().as_str()),
        "{c:?}"
    );
    assert_eq!(served_local(&c), "127.0.0.1:15001".parse().expect("addr"));
    let counters = bed.capture.counters(a.pod_id).expect("counters");
    assert_eq!(counters.outbound_captured, 3, "{counters:?}");
}

#[test]
fn two_hundred_concurrent_connects_each_recover_their_own_destination() {
    let mut bed = Bed::new(&["a", "b"]);
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let b = bed.pod("b");
    let targets: Vec<SocketAddr> = (0..200u16)
        .map(|i| {
            if i % 2 == 0 {
                v4(b, 10000 + i)
            } else {
                v6(b, 10000 + i)
            }
        })
        .collect();
    let results = connect(bed.pod("a"), &[], &targets);
    for r in &results {
        let c = r
            .outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", r.target));
        // The line is what the client sent on this very connection; orig is what the maps
        // say for the peer address the listener accepted: they must agree, one by one.
        assert_eq!(reply_field(&c.reply, "line"), Some(r.target.as_str()));
        assert_eq!(c.orig(), Some(r.target.as_str()), "{c:?}");
    }
    assert_eq!(
        bed.capture
            .counters(a.pod_id)
            .expect("counters")
            .outbound_captured,
        200
    );
}

#[test]
fn unenrolled_pods_are_untouched_and_unenroll_restores_the_direct_path() {
    let mut bed = Bed::new(&["a", "b", "c"]);
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let (b4, b6) = (v4(bed.pod("b"), APP_PORT), v6(bed.pod("b"), APP_PORT));
    let _app = serve(bed.pod("b"), "b-app", &[b4, b6]);

    // c is not enrolled: it reaches b's app directly, on the wire.
    let sniffer = bed.bed.sniff().expect("sniff");
    let direct = connect_one(bed.pod("c"), &[], b4);
    assert_eq!(served_by(&direct), "b-app");
    // a is enrolled: its connect is captured and never leaves the pod.
    let captured = connect_one(bed.pod("a"), &[], b4);
    assert_eq!(served_by(&captured), "outbound");
    let segments = sniffer.stop();
    let syns_to_app: Vec<_> = segments
        .iter()
        .filter(|s| s.is_syn() && s.dst == b4)
        .collect();
    assert_eq!(
        syns_to_app.len(),
        1,
        "only c's connection crosses the underlay: {syns_to_app:?}"
    );
    assert_eq!(
        syns_to_app[0].src.ip(),
        std::net::IpAddr::V4(bed.pod("c").ipv4())
    );
    assert!(
        sniff::any_payload_contains(&segments, b4.to_string().as_bytes()),
        "c's plaintext is visible on the wire"
    );

    assert!(bed.capture.unenroll(a.pod_id).expect("unenroll"));
    for target in [b4, b6] {
        assert_eq!(
            served_by(&connect_one(bed.pod("a"), &[], target)),
            "b-app",
            "{target}"
        );
    }
    assert!(
        !bed.capture
            .unenroll(a.pod_id)
            .expect("second unenroll is a no-op")
    );
}

#[test]
fn a_socket_marked_by_ztunnel_is_not_captured() {
    let mut bed = Bed::new(&["a", "b"]);
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let b = bed.pod("b");
    let _app = serve(b, "b-app", &[v4(b, APP_PORT), v6(b, APP_PORT)]);
    for target in [v4(b, APP_PORT), v6(b, APP_PORT)] {
        assert_eq!(
            served_by(&connect_one(bed.pod("a"), &["--mark", "0x539"], target)),
            "b-app"
        );
        // Only the low 12 bits are ztunnel's, as in Istio's rules.
        assert_eq!(
            served_by(&connect_one(bed.pod("a"), &["--mark", "0x10539"], target)),
            "b-app"
        );
        assert_eq!(
            served_by(&connect_one(bed.pod("a"), &["--mark", "0x538"], target)),
            "outbound"
        );
    }
    let counters = bed.capture.counters(a.pod_id).expect("counters");
    assert_eq!(
        (counters.outbound_captured, counters.outbound_passthrough),
        (2, 4),
        "{counters:?}"
    );
}

#[test]
fn an_excluded_outbound_port_is_not_captured() {
    let mut bed = Bed::new(&["a", "b"]);
    let (path, addrs) = (bed.pod("a").netns_path(), bed.pod("a").addresses());
    let a = bed
        .capture
        .enroll(&EnrollRequest {
            excluded_outbound_ports: &[APP_PORT],
            ..request(&path, &addrs)
        })
        .expect("enroll");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let b = bed.pod("b");
    let _app = serve(b, "b-app", &[v4(b, APP_PORT), v4(b, 8081)]);
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], v4(b, APP_PORT))),
        "b-app"
    );
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], v4(b, 8081))),
        "outbound"
    );
}

#[test]
fn loopback_and_own_address_connects_are_not_captured() {
    let mut bed = Bed::new(&["a"]);
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let pod = bed.pod("a");
    let _app = serve(
        pod,
        "a-app",
        &[
            SocketAddr::from(([0, 0, 0, 0], APP_PORT)),
            "[::]:8081".parse().expect("addr"),
        ],
    );
    for target in ["127.0.0.1:8080", "[::1]:8081"] {
        assert_eq!(
            served_by(&connect_one(pod, &[], target.parse().expect("addr"))),
            "a-app",
            "{target}"
        );
    }
    assert_eq!(
        served_by(&connect_one(pod, &[], v4(pod, APP_PORT))),
        "a-app"
    );
    assert_eq!(served_by(&connect_one(pod, &[], v6(pod, 8081))), "a-app");
    assert_eq!(
        bed.capture
            .counters(a.pod_id)
            .expect("counters")
            .outbound_captured,
        0
    );
}
