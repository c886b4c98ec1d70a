//! The loader's lifecycle: restart adoption, idempotent enrollment, rollback, pruning, bad
//! input, and teardown that leaves nothing behind.

use crate::support::*;
use amesh_ebpf_loader::{Capture, CaptureConfig, CaptureError, CgroupAttachments, EnrollRequest};
use amesh_sys::{bpf::AttachType, netns::NetnsError};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::Path,
    time::Duration,
};

fn sk_lookup_attachments(pod: &amesh_testbed::Pod) -> u32 {
    amesh_sys::bpf::attached_count(pod.netns().as_fd(), AttachType::SkLookup).expect("query netns")
}

/// The count once detaching settles: the kernel frees a released link after an RCU grace
/// period, so a query right after the release may still see it for a moment.
fn sk_lookup_attachments_settled(pod: &amesh_testbed::Pod) -> u32 {
    let settled = amesh_testbed::eventually(
        "sk_lookup links released",
        std::time::Duration::from_secs(2),
        || match sk_lookup_attachments(pod) {
            0 => Ok(0),
            n => Err(n),
        },
    );
    // Still attached after the wait: the caller's assertion reports the count.
    settled.unwrap_or_else(|_| sk_lookup_attachments(pod))
}

const ONE_EACH: CgroupAttachments = CgroupAttachments {
    connect4: 1,
    connect6: 1,
    sock_ops: 1,
};

#[test]
fn a_restarted_loader_adopts_the_pins_and_teardown_leaves_nothing() {
    let mut bed = Bed::new(&["a", "b", "c"]);
    let a = bed.enroll("a");
    let b = bed.enroll("b");
    let (_h, _p) = inbound_listeners(&mut bed, "b", b.pod_id);
    assert!(!bed.capture.adopted());
    assert_eq!(bed.capture.cgroup_attachments().expect("query"), ONE_EACH);

    // The owner goes away without tearing down; capture keeps working meanwhile.
    let config = capture_config(&bed.bed);
    let Bed {
        capture,
        pods,
        bed: testbed,
    } = bed;
    drop(capture);
    let b_app = SocketAddr::new(IpAddr::V4(pods[1].ipv4()), APP_PORT);
    assert_eq!(
        served_by(&connect_one(&pods[2], &[], b_app)),
        "plaintext",
        "inbound with no owner"
    );
    let mut bed = Bed {
        capture: Capture::load_or_adopt(&config).expect("adopt"),
        pods,
        bed: testbed,
    };
    assert!(bed.capture.adopted());
    assert_eq!(
        bed.capture.cgroup_attachments().expect("query"),
        ONE_EACH,
        "nothing attached twice"
    );
    assert_eq!(sk_lookup_attachments(bed.pod("a")), 1);
    assert_eq!(
        bed.capture.pods().expect("pods"),
        vec![a.clone(), b.clone()],
        "enrollment survived"
    );

    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let c_app = v4(bed.pod("c"), APP_PORT);
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], c_app)),
        "outbound"
    );
    assert_eq!(
        served_by(&connect_one(bed.pod("c"), &[], b_app)),
        "plaintext"
    );
    // The adopted instance can enroll more pods and they work too.
    let c = bed.enroll("c");
    let (_h2, _p2) = inbound_listeners(&mut bed, "c", c.pod_id);
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &["--mark", "0x539"], c_app)),
        "plaintext"
    );

    let pin_root = bed.bed.pin_root();
    let Bed {
        capture,
        pods,
        bed: testbed,
    } = bed;
    capture.teardown().expect("teardown");
    assert!(!pin_root.exists(), "pins left: {}", pin_root.display());
    let cgroup = std::fs::File::open(testbed.cgroup_path()).expect("cgroup");
    for t in [
        AttachType::CgroupInet4Connect,
        AttachType::CgroupInet6Connect,
        AttachType::CgroupSockOps,
        AttachType::CgroupUdp4Sendmsg,
        AttachType::CgroupUdp6Sendmsg,
        AttachType::CgroupUdp4Recvmsg,
        AttachType::CgroupUdp6Recvmsg,
    ] {
        assert_eq!(
            amesh_sys::bpf::attached_count(cgroup.as_fd(), t).expect("query"),
            0,
            "{t:?}"
        );
    }
    for p in &pods {
        assert_eq!(sk_lookup_attachments_settled(p), 0, "{}", p.name());
    }
    let (cgroup_path, prefix) = (
        testbed.cgroup_path().to_path_buf(),
        testbed.prefix().to_string(),
    );
    let left = testbed.close();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!cgroup_path.exists());
    assert!(
        amesh_testbed::ip::netns_list()
            .iter()
            .all(|n| !n.starts_with(&prefix))
    );
    for p in &pods {
        // The namespaces live on while we hold their fds; their veths must be gone.
        let has_eth0 = p
            .run(|| amesh_sys::netns::interface_exists("eth0"))
            .expect("enter");
        assert!(!has_eth0, "{} still has eth0", p.name());
    }
}

#[test]
fn enrolling_twice_updates_in_place() {
    let mut bed = Bed::new(&["a", "b"]);
    let first = bed.enroll("a");
    let (path, only_v4) = (
        bed.pod("a").netns_path(),
        vec![IpAddr::V4(bed.pod("a").ipv4())],
    );
    let second = bed
        .capture
        .enroll(&EnrollRequest {
            excluded_outbound_ports: &[9000],
            ..request(&path, &only_v4)
        })
        .expect("enroll again");
    assert_eq!(second.pod_id, first.pod_id);
    assert_eq!(second.addresses, only_v4, "the dropped address is released");
    assert_eq!(second.config.excluded_outbound_ports[0], 9000);
    assert_eq!(sk_lookup_attachments(bed.pod("a")), 1);
    assert_eq!(bed.capture.pods().expect("pods").len(), 1);
    assert_eq!(
        bed.capture.find(&path).expect("find").map(|p| p.pod_id),
        Some(first.pod_id)
    );
    assert_eq!(
        bed.capture.find(&bed.pod("b").netns_path()).expect("find"),
        None
    );
}

#[test]
fn a_path_that_is_not_a_netns_is_refused_and_nothing_is_attached() {
    let mut bed = Bed::new(&["a"]);
    let addrs = bed.pod("a").addresses();
    let err = bed
        .capture
        .enroll(&request(Path::new("/proc/self/status"), &addrs))
        .unwrap_err();
    assert!(
        matches!(err, CaptureError::Netns(NetnsError::NotNetns { .. })),
        "{err}"
    );
    let gone = Path::new("/run/netns/amesh-no-such-netns");
    let err = bed.capture.enroll(&request(gone, &addrs)).unwrap_err();
    assert!(
        matches!(err, CaptureError::Netns(NetnsError::NotFound { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = bed
        .capture
        .enroll(&request(&bed.pod("a").netns_path(), &[]))
        .unwrap_err();
    assert!(matches!(err, CaptureError::NoAddresses), "{err}");
    assert_eq!(bed.capture.pods().expect("pods"), vec![]);
    assert!(
        bed.capture
            .maps()
            .owner_of(addrs[0])
            .expect("lookup")
            .is_none()
    );
    let links = std::fs::read_dir(bed.bed.pin_root().join("links"))
        .expect("links")
        .count();
    // connect4/6, sock_ops, sendmsg4/6 and recvmsg4/6.
    assert_eq!(links, 7, "only the cgroup links");
}

#[test]
fn a_failed_enrollment_is_rolled_back() {
    let mut bed = Bed::new(&["a", "b", "c"]);
    bed.enroll("a");
    // b claims a's address: refused, and b ends up with nothing attached or recorded.
    let (path, addrs) = (
        bed.pod("b").netns_path(),
        vec![
            IpAddr::V4(bed.pod("b").ipv4()),
            IpAddr::V4(bed.pod("a").ipv4()),
        ],
    );
    let err = bed.capture.enroll(&request(&path, &addrs)).unwrap_err();
    assert!(matches!(err, CaptureError::AddressInUse { .. }), "{err}");
    assert_eq!(bed.capture.pods().expect("pods").len(), 1);
    assert_eq!(sk_lookup_attachments_settled(bed.pod("b")), 0);
    assert!(
        bed.capture
            .maps()
            .owner_of(addrs[0])
            .expect("lookup")
            .is_none()
    );
    assert_eq!(bed.capture.find(&path).expect("find"), None);
    // b's traffic is untouched: it reaches an unenrolled pod's app directly.
    let c = bed.pod("c");
    let _app = serve(c, "c-app", &["[::]:8080".parse().expect("addr")]);
    assert_eq!(
        served_by(&connect_one(bed.pod("b"), &[], v4(c, APP_PORT))),
        "c-app"
    );
}

#[test]
fn a_failure_mid_enrollment_undoes_every_step() {
    let mut bed = Bed::new(&["a"]);
    let (path, addrs) = (bed.pod("a").netns_path(), bed.pod("a").addresses());
    // A socket that is not listening cannot be a listener: registration fails after the
    // settings, addresses and sk_lookup link are already in place.
    let not_listening =
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
    let bad = Some((not_listening.as_fd(), not_listening.as_fd()));
    let err = bed
        .capture
        .enroll(&EnrollRequest {
            listeners: bad,
            ..request(&path, &addrs)
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::Map {
                map: "LISTENERS",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(bed.capture.pods().expect("pods"), vec![]);
    assert_eq!(sk_lookup_attachments_settled(bed.pod("a")), 0);
    assert!(
        bed.capture
            .maps()
            .owner_of(addrs[0])
            .expect("lookup")
            .is_none()
    );
    assert_eq!(
        bed.capture.pod(0).expect("pod"),
        None,
        "the slot's settings were cleared"
    );

    // An update that fails puts the previous settings back.
    let before = bed.enroll("a");
    let update = EnrollRequest {
        excluded_outbound_ports: &[9000],
        listeners: bad,
        ..request(&path, &addrs)
    };
    let err = bed.capture.enroll(&update).unwrap_err();
    assert!(matches!(err, CaptureError::Map { .. }), "{err}");
    assert_eq!(bed.capture.pod(before.pod_id).expect("pod"), Some(before));
}

#[test]
fn a_pod_whose_netns_vanished_is_pruned_and_its_address_reused() {
    let mut bed = Bed::new(&["gone", "next"]);
    let gone = bed.enroll("gone");
    let gone_ip = IpAddr::V4(bed.pod("gone").ipv4());
    bed.pods.remove(0).delete().expect("delete netns");
    // "next" gets the dead pod's address; enrollment prunes the dead pod to make room. The
    // kernel tears namespaces down asynchronously, so this retries for a bounded time.
    let (path, addrs) = (bed.pod("next").netns_path(), vec![gone_ip]);
    let next =
        amesh_testbed::eventually("the dead pod pruned", Duration::from_secs(10), || match bed
            .capture
            .enroll(&request(&path, &addrs))
        {
            Ok(p) => Ok(Ok(p)),
            Err(e @ CaptureError::AddressInUse { .. }) => Err(e),
            Err(e) => Ok(Err(e)),
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("enroll: {e}"));
    assert_eq!(next.addresses, vec![gone_ip]);
    let pods = bed.capture.pods().expect("pods");
    assert_eq!(pods.len(), 1, "the vanished pod was pruned: {pods:?}");
    assert_ne!(pods[0].netns_cookie, gone.netns_cookie);
}

#[test]
fn adopting_onto_another_cgroup_moves_the_links() {
    let bed = Bed::new(&[]);
    let child = bed.bed.cgroup_path().join("moved");
    std::fs::create_dir(&child).expect("child cgroup");
    let config = CaptureConfig {
        cgroup: child,
        ..capture_config(&bed.bed)
    };
    let Bed {
        capture,
        bed: testbed,
        ..
    } = bed;
    drop(capture);
    let moved = Capture::load_or_adopt(&config).expect("adopt");
    assert!(!moved.adopted(), "links had to be re-attached");
    assert_eq!(moved.cgroup_attachments().expect("query"), ONE_EACH);
    let parent = std::fs::File::open(testbed.cgroup_path()).expect("cgroup");
    let left = amesh_sys::bpf::attached_count(parent.as_fd(), AttachType::CgroupInet4Connect)
        .expect("query");
    assert_eq!(left, 0, "the old cgroup's links are gone");
}

#[test]
fn operator_mistakes_get_precise_errors() {
    let bed = Bed::new(&[]);
    let err = Capture::load_or_adopt(&CaptureConfig {
        cgroup: "/proc".into(),
        ..capture_config(&bed.bed)
    })
    .unwrap_err();
    assert!(matches!(err, CaptureError::CgroupNotFound { .. }), "{err}");
    let not_bpffs = CaptureConfig {
        pin_root: "/tmp/amesh-not-bpffs".into(),
        ..capture_config(&bed.bed)
    };
    let err = Capture::load_or_adopt(&not_bpffs).unwrap_err();
    assert!(matches!(err, CaptureError::BpffsNotMounted { .. }), "{err}");
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
}
