//! Inbound capture: connections arriving at an enrolled pod go to ztunnel's listeners with the
//! original destination as their local address; what must not be captured is not.

use crate::support::*;
use amesh_ebpf_common::PROTO_TCP;
use amesh_ebpf_loader::EnrollRequest;
use amesh_sys::{
    bpf::{SkLookupCtx, test_run_sk_lookup},
    sockopt::socket_cookie,
};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

#[test]
fn app_port_lands_on_the_plaintext_listener_with_the_original_local_address() {
    let mut bed = Bed::new(&["a", "b"]);
    let b = bed.enroll("b");
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    let _app = serve(
        bed.pod("b"),
        "b-app",
        &[SocketAddr::from(([0, 0, 0, 0], APP_PORT))],
    );
    for target in [v4(bed.pod("b"), APP_PORT), v6(bed.pod("b"), APP_PORT)] {
        let c = connect_one(bed.pod("a"), &[], target);
        assert_eq!(served_by(&c), "plaintext", "{target}");
        assert_eq!(
            served_local(&c),
            target,
            "the accepted socket keeps the original destination"
        );
    }
    let hb = v4(bed.pod("b"), 15008);
    let c = connect_one(bed.pod("a"), &[], hb);
    assert_eq!((served_by(&c), served_local(&c)), ("hbone", hb));
    let counters = bed.capture.counters(b.pod_id).expect("counters");
    assert_eq!(
        (counters.inbound_plaintext, counters.inbound_hbone),
        (2, 1),
        "{counters:?}"
    );
}

#[test]
fn a_pod_reaching_its_own_app_is_not_captured() {
    let mut bed = Bed::new(&["b"]);
    let b = bed.enroll("b");
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    let pod = bed.pod("b");
    let _app = serve(pod, "b-app", &["[::]:8080".parse().expect("addr")]);
    for target in [
        "127.0.0.1:8080".parse().expect("addr"),
        v4(pod, APP_PORT),
        v6(pod, APP_PORT),
    ] {
        assert_eq!(
            served_by(&connect_one(pod, &[], target)),
            "b-app",
            "{target}"
        );
    }
    let counters = bed.capture.counters(b.pod_id).expect("counters");
    assert_eq!(
        counters.inbound_plaintext + counters.inbound_hbone,
        0,
        "{counters:?}"
    );
}

#[test]
fn the_kubelet_probe_source_is_not_captured() {
    let mut bed = Bed::new(&["kubelet", "b"]);
    let b = bed.enroll("b");
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    bed.pod("kubelet")
        .add_address("169.254.7.127/32")
        .expect("probe address");
    bed.pod("b")
        .add_route("169.254.7.127/32")
        .expect("route back");
    let _app = serve(bed.pod("b"), "b-app", &["[::]:8080".parse().expect("addr")]);
    let target = v4(bed.pod("b"), APP_PORT);
    let probe = connect_one(bed.pod("kubelet"), &["--bind", "169.254.7.127"], target);
    assert_eq!(served_by(&probe), "b-app");
    assert_eq!(
        served_by(&connect_one(bed.pod("kubelet"), &[], target)),
        "plaintext"
    );
}

#[test]
fn an_excluded_inbound_port_reaches_the_app() {
    let mut bed = Bed::new(&["a", "b"]);
    let (path, addrs) = (bed.pod("b").netns_path(), bed.pod("b").addresses());
    let b = bed
        .capture
        .enroll(&EnrollRequest {
            excluded_inbound_ports: &[9100],
            ..request(&path, &addrs)
        })
        .expect("enroll");
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    let _app = serve(
        bed.pod("b"),
        "b-app",
        &[
            "[::]:9100".parse().expect("addr"),
            "[::]:8080".parse().expect("addr"),
        ],
    );
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], v4(bed.pod("b"), 9100))),
        "b-app"
    );
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], v4(bed.pod("b"), APP_PORT))),
        "plaintext"
    );
}

#[test]
fn without_registered_listeners_inbound_is_refused_not_sent_to_the_app() {
    let mut bed = Bed::new(&["a", "b"]);
    let b = bed.enroll("b");
    let _app = serve(bed.pod("b"), "b-app", &["[::]:8080".parse().expect("addr")]);
    let r = connect(
        bed.pod("a"),
        &["--timeout-ms", "1500"],
        &[v4(bed.pod("b"), APP_PORT)],
    )
    .remove(0);
    assert!(
        r.outcome.is_err(),
        "the app must not be reachable around ztunnel: {r:?}"
    );
    assert!(
        bed.capture
            .counters(b.pod_id)
            .expect("counters")
            .inbound_refused
            >= 1
    );
    // Once ztunnel registers, the same connection is taken by it.
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], v4(bed.pod("b"), APP_PORT))),
        "plaintext"
    );
}

fn mapped(ip: IpAddr) -> ([u32; 4], u32) {
    let words = amesh_ebpf_loader::maps::to_ip6(ip);
    match ip {
        IpAddr::V4(v) => ([0; 4], u32::from_ne_bytes(v.octets())),
        IpAddr::V6(_) => (words, 0),
    }
}

fn lookup_ctx(src: IpAddr, dst: IpAddr, dst_port: u16, protocol: u32) -> SkLookupCtx {
    let (src6, src4) = mapped(src);
    let (dst6, dst4) = mapped(dst);
    SkLookupCtx {
        family: if dst.is_ipv4() {
            libc::AF_INET as u32
        } else {
            libc::AF_INET6 as u32
        },
        protocol,
        remote_ip4: src4,
        remote_ip6: src6,
        remote_port: 40000u16.to_be(),
        local_ip4: dst4,
        local_ip6: dst6,
        local_port: u32::from(dst_port),
        ..SkLookupCtx::default()
    }
}

/// The sk_lookup program's decisions, run with `BPF_PROG_TEST_RUN` on contexts we build.
#[test]
fn sk_lookup_decisions_under_prog_test_run() {
    let mut bed = Bed::new(&["b", "c"]);
    let b = bed.enroll("b");
    let _c = bed.enroll("c");
    let (hbone, plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    let hbone_cookie = socket_cookie(hbone.as_fd()).expect("cookie");
    let plain_cookie = socket_cookie(plain.as_fd()).expect("cookie");
    let peer: IpAddr = "10.200.9.9".parse().expect("addr");
    let (b4, b6) = (
        IpAddr::V4(bed.pod("b").ipv4()),
        IpAddr::V6(bed.pod("b").ipv6()),
    );
    let c4 = IpAddr::V4(bed.pod("c").ipv4());
    let probe: IpAddr = "169.254.7.127".parse().expect("addr");
    let cases: Vec<(&str, SkLookupCtx, u32, u64)> = vec![
        (
            "v4 app port -> plaintext",
            lookup_ctx(peer, b4, 8080, PROTO_TCP),
            SK_PASS,
            plain_cookie,
        ),
        (
            "v6 app port -> plaintext",
            lookup_ctx("fd00:200::99".parse().expect("addr"), b6, 8080, PROTO_TCP),
            SK_PASS,
            plain_cookie,
        ),
        (
            "15008 -> hbone",
            lookup_ctx(peer, b4, 15008, PROTO_TCP),
            SK_PASS,
            hbone_cookie,
        ),
        (
            "udp untouched",
            lookup_ctx(peer, b4, 53, libc::IPPROTO_UDP as u32),
            SK_PASS,
            0,
        ),
        (
            "probe source untouched",
            lookup_ctx(probe, b4, 8080, PROTO_TCP),
            SK_PASS,
            0,
        ),
        (
            "loopback source untouched",
            lookup_ctx("127.0.0.1".parse().expect("addr"), b4, 8080, PROTO_TCP),
            SK_PASS,
            0,
        ),
        (
            "the pod itself as source untouched",
            lookup_ctx(b4, b4, 8080, PROTO_TCP),
            SK_PASS,
            0,
        ),
        (
            "unregistered address refused",
            lookup_ctx(peer, "10.200.50.50".parse().expect("addr"), 8080, PROTO_TCP),
            SK_DROP,
            0,
        ),
        (
            "unregistered address, from itself",
            lookup_ctx(
                "10.200.50.50".parse().expect("addr"),
                "10.200.50.50".parse().expect("addr"),
                8080,
                PROTO_TCP,
            ),
            SK_PASS,
            0,
        ),
        (
            "enrolled pod without listeners refused",
            lookup_ctx(peer, c4, 8080, PROTO_TCP),
            SK_DROP,
            0,
        ),
    ];
    let prog = bed.capture.sk_lookup_program().expect("program");
    let runs: Vec<_> = bed
        .pod("b")
        .run(|| {
            cases
                .iter()
                .map(|(_, ctx, _, _)| test_run_sk_lookup(prog, ctx))
                .collect()
        })
        .expect("enter pod");
    for ((name, _, verdict, cookie), run) in cases.iter().zip(runs) {
        let run = run.unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN: {e}"));
        assert_eq!(
            (run.verdict, run.selected_cookie),
            (*verdict, *cookie),
            "{name}"
        );
    }
}

#[test]
fn an_address_not_registered_for_the_pod_is_refused() {
    let mut bed = Bed::new(&["a", "b"]);
    let b = bed.enroll("b");
    let (_hbone, _plain) = inbound_listeners(&mut bed, "b", b.pod_id);
    bed.pod("b")
        .add_address("10.200.1.99/16")
        .expect("extra address");
    let _app = serve(bed.pod("b"), "b-app", &["[::]:8080".parse().expect("addr")]);
    let extra: SocketAddr = "10.200.1.99:8080".parse().expect("addr");
    let r = connect(bed.pod("a"), &["--timeout-ms", "1500"], &[extra]).remove(0);
    assert!(
        r.outcome.is_err(),
        "an unregistered address must not lead to the app: {r:?}"
    );
    // The pod itself may still use it (ztunnel's marked sockets are not redirected outbound).
    let own = ["--mark", "0x539", "--bind", "10.200.1.99"];
    assert_eq!(served_by(&connect_one(bed.pod("b"), &own, extra)), "b-app");
}
