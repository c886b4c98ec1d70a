//! The loader's lifecycle: restart adoption, idempotent enrollment, rollback, bad input, and
//! teardown that leaves nothing behind.

use crate::support::*;
use amesh_ebpf_loader::{Capture, CaptureConfig, CaptureError, CgroupAttachments, EnrollRequest};
use amesh_sys::{bpf::AttachType, netns::NetnsError};
use std::{net::IpAddr, os::fd::AsFd, path::Path};

fn sk_lookup_attachments(pod: &amesh_testbed::Pod) -> u32 {
    amesh_sys::bpf::attached_count(pod.netns().as_fd(), AttachType::SkLookup).expect("query netns")
}

const ONE_EACH: CgroupAttachments = CgroupAttachments {
    connect4: 1,
    connect6: 1,
    sock_ops: 1,
};

#[test]
fn a_restarted_loader_adopts_the_pins_and_teardown_leaves_nothing() {
    let mut bed = Bed::new(&["a", "b"]);
    let a = bed.enroll("a");
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
        vec![a.clone()],
        "enrollment survived"
    );

    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let target = v4(bed.pod("b"), APP_PORT);
    assert_eq!(
        served_by(&connect_one(bed.pod("a"), &[], target)),
        "outbound"
    );
    // The adopted instance can enroll more pods and they work too.
    let b = bed.enroll("b");
    let (_h, _p) = inbound_listeners(&mut bed, "b", b.pod_id);
    let c = connect_one(bed.pod("a"), &["--mark", "0x539"], target);
    assert_eq!(served_by(&c), "plaintext");

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
    ] {
        assert_eq!(
            amesh_sys::bpf::attached_count(cgroup.as_fd(), t).expect("query"),
            0,
            "{t:?}"
        );
    }
    for p in &pods {
        assert_eq!(sk_lookup_attachments(p), 0, "{}", p.name());
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
    assert_eq!(bed.capture.pods().expect("pods"), vec![]);
    assert!(
        bed.capture
            .maps()
            .owner_of(addrs[0])
            .expect("lookup")
            .is_none()
    );
    assert_eq!(
        std::fs::read_dir(bed.bed.pin_root().join("links"))
            .expect("links")
            .count(),
        3,
        "only the cgroup links"
    );
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
    assert_eq!(sk_lookup_attachments(bed.pod("b")), 0);
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
fn operator_mistakes_get_precise_errors() {
    let bed = Bed::new(&[]);
    let err = Capture::load_or_adopt(&CaptureConfig {
        cgroup: "/proc".into(),
        ..capture_config(&bed.bed)
    })
    .unwrap_err();
    assert!(matches!(err, CaptureError::CgroupNotFound { .. }), "{err}");
    let err = Capture::load_or_adopt(&CaptureConfig {
        pin_root: "/tmp/amesh-not-bpffs".into(),
        ..capture_config(&bed.bed)
    })
    .unwrap_err();
    assert!(matches!(err, CaptureError::BpffsNotMounted { .. }), "{err}");
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
}
