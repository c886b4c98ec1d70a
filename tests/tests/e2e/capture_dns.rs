//! DNS capture: an enrolled pod's queries to port 53 land on ztunnel's in-pod DNS proxy
//! (127.0.0.1:15053 / [::1]:15053), over UDP sent with or without connect() and over TCP,
//! and the proxy's UDP answers read as coming from the resolver the pod asked.

use crate::support::*;
use amesh_testbed::Pod;
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A UDP server inside a pod that answers every datagram with its name.
struct UdpAnswerer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpAnswerer {
    fn start(pod: &Pod, name: &'static str, addr: SocketAddr) -> Self {
        let socket = pod
            .run(|| {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM,
                    None,
                )?;
                if addr.is_ipv6() {
                    s.set_only_v6(!addr.ip().is_unspecified())?;
                }
                s.bind(&addr.into())?;
                Ok::<_, std::io::Error>(UdpSocket::from(s))
            })
            .expect("enter the pod")
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", pod.name()));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpAnswerer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `amesh-probe udp` from `pod`: (reply, the address it came from).
fn ask(pod: &Pod, extra: &[&str], target: SocketAddr) -> (String, String) {
    let out = pod
        .command(PROBE)
        .arg("udp")
        .args(extra)
        .arg(target.to_string())
        .arg("query")
        .output()
        .expect("run the probe");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {text:?} {}", String::from_utf8_lossy(&out.stderr)))
            .to_string()
    };
    (field("reply="), field("from="))
}

#[test]
fn dns_queries_land_on_the_in_pod_proxy_and_answers_read_as_the_resolvers() {
    let mut bed = Bed::new(&["a", "b"]);
    let a = bed.enroll("a");
    let pa = bed.pod("a");
    let _proxy = (
        UdpAnswerer::start(pa, "proxy", "127.0.0.1:15053".parse().unwrap()),
        UdpAnswerer::start(pa, "proxy", "[::1]:15053".parse().unwrap()),
    );
    let _tcp_proxy = (
        amesh_testbed::standin::StandIn::start(
            pa,
            "dns-proxy",
            "127.0.0.1:15053".parse().unwrap(),
            None,
        )
        .expect("tcp proxy"),
        amesh_testbed::standin::StandIn::start(
            pa,
            "dns-proxy",
            "[::1]:15053".parse().unwrap(),
            None,
        )
        .expect("tcp proxy"),
    );
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    let b = bed.pod("b");
    let _resolver = (
        UdpAnswerer::start(b, "resolver", "[::]:53".parse().unwrap()),
        UdpAnswerer::start(b, "resolver", "[::]:5353".parse().unwrap()),
    );
    let pa = bed.pod("a");
    for resolver in [v4(b, 53), v6(b, 53)] {
        for connected in [false, true] {
            let extra: &[&str] = if connected { &["--connected"] } else { &[] };
            let (reply, from) = ask(pa, extra, resolver);
            assert_eq!(reply, "proxy", "{resolver} connected={connected}");
            assert_eq!(
                from,
                resolver.to_string(),
                "the answer reads as the resolver's"
            );
        }
        // TCP DNS goes to the proxy's TCP listener, not to the outbound one.
        let c = connect_one(pa, &[], resolver);
        assert_eq!(served_by(&c), "dns-proxy", "{resolver}: {c:?}");
        // Not DNS: other UDP is left alone.
        let other = SocketAddr::new(resolver.ip(), 5353);
        assert_eq!(ask(pa, &[], other), ("resolver".into(), other.to_string()));
        // ztunnel's own queries (its mark) go to the resolver.
        assert_eq!(ask(pa, &["--mark", "1337"], resolver).0, "resolver");
    }
    // An IPv6 socket asking an IPv4-mapped resolver: the IPv4 proxy, answering as the
    // mapped resolver.
    let mapped: SocketAddr = format!("[::ffff:{}]:53", b.ipv4()).parse().unwrap();
    assert_eq!(ask(pa, &[], mapped), ("proxy".into(), mapped.to_string()));
    let counters = bed.capture.counters(a.pod_id).expect("counters");
    assert_eq!(
        counters.outbound_captured, 0,
        "DNS is not outbound: {counters:?}"
    );

    // Opted out (ambient.istio.io/dns-capture: "false"): the resolver answers itself.
    let (addrs, path) = (bed.pod("a").addresses(), bed.pod("a").netns_path());
    bed.capture
        .enroll(&amesh_ebpf_loader::EnrollRequest {
            dns_capture: false,
            ..request(&path, &addrs)
        })
        .expect("re-enroll");
    let (pa, b) = (bed.pod("a"), bed.pod("b"));
    for resolver in [v4(b, 53), v6(b, 53)] {
        assert_eq!(
            ask(pa, &[], resolver),
            ("resolver".into(), resolver.to_string())
        );
        assert_eq!(ask(pa, &["--connected"], resolver).0, "resolver");
    }
}
