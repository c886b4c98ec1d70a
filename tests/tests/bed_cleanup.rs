//! The test bed removes what it made when a test panics and when the process gets Ctrl-C.

use amesh_testbed::{TestBed, ip::netns_list, require_root};
use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Command, Stdio},
};

fn objects_with(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let cg = amesh_sys::fs::cgroup2_mount()
        .expect("cgroup2")
        .join(prefix);
    if cg.exists() {
        found.push(cg.display().to_string());
    }
    let pins = Path::new("/sys/fs/bpf").join(prefix);
    if pins.exists() {
        found.push(pins.display().to_string());
    }
    found
}

#[test]
fn a_panicking_test_leaves_nothing() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let bed = TestBed::new().expect("bed");
        let _pod = bed.add_pod("p").expect("pod");
        std::fs::create_dir_all(bed.pin_root()).expect("pins");
        tx.send(bed.prefix().to_string()).expect("send");
        assert!(!objects_with(bed.prefix()).is_empty());
        panic!("test failure inside a bed");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let prefix = rx.recv().expect("prefix");
    assert_eq!(objects_with(&prefix), Vec::<String>::new());
}

#[test]
fn ctrl_c_removes_everything() {
    require_root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_amesh-bed-hold"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start holder");
    let mut prefix = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut prefix)
        .expect("prefix");
    let prefix = prefix.trim().to_string();
    assert!(prefix.starts_with("amesh-"), "{prefix:?}");
    let before = objects_with(&prefix);
    assert_eq!(
        before.len(),
        4,
        "netns of the underlay and the pod, cgroup, pins: {before:?}"
    );

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "dies of the signal after cleaning up: {status:?}"
    );
    assert_eq!(objects_with(&prefix), Vec::<String>::new());
}
