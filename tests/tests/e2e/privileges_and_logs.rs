//! What an operator sees without privileges, and the kernel programs' debug logs.

use crate::support::*;
use amesh_ebpf_loader::{Capture, CaptureConfig, CaptureError};
use std::sync::{Arc, Mutex};

#[test]
fn without_privileges_loading_says_so() {
    let bed = Bed::new(&[]);
    let config = CaptureConfig {
        pin_root: bed.bed.pin_root().join("unprivileged"),
        ..capture_config(&bed.bed)
    };
    let result = std::thread::spawn(move || {
        amesh_sys::fs::become_user_on_this_thread(65534).expect("drop privileges");
        Capture::load_or_adopt(&config).map(drop)
    })
    .join()
    .expect("thread");
    let err = result.unwrap_err();
    assert!(matches!(err, CaptureError::NotPrivileged), "{err}");
    assert!(err.to_string().contains("run as root"), "{err}");
}

/// Collects the messages of `amesh_ebpf` events from every thread.
struct Collect(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Collect {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.target() == "amesh_ebpf"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        struct Msg<'a>(&'a mut String);
        impl tracing::field::Visit for Msg<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0.push_str(&format!("{v:?}"));
                }
            }
        }
        let mut s = String::new();
        e.record(&mut Msg(&mut s));
        self.0.lock().expect("log sink").push(s);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn debug_logs_reach_tracing_when_asked_for() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    // Global, because the log pump runs on its own thread; only amesh_ebpf events are kept.
    let _ = tracing::subscriber::set_global_default(Collect(lines.clone()));
    amesh_testbed::require_root();
    let bed = amesh_testbed::TestBed::new().expect("bed");
    let pods = vec![
        bed.add_pod("a").expect("pod"),
        bed.add_pod("b").expect("pod"),
    ];
    let capture = Capture::load_or_adopt(&CaptureConfig {
        debug_logs: true,
        ..capture_config(&bed)
    })
    .expect("load");
    let mut bed = Bed { capture, pods, bed };
    let a = bed.enroll("a");
    let _out = outbound_listeners(&bed, "a", a.pod_id);
    connect_one(bed.pod("a"), &[], v4(bed.pod("b"), APP_PORT));
    let want = format!("pod {} outbound port {APP_PORT} redirected", a.pod_id);
    amesh_testbed::eventually(
        format!("'{want}' logged"),
        std::time::Duration::from_secs(5),
        || {
            let seen = lines.lock().expect("sink");
            if seen.iter().any(|l| l.contains(&want)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
