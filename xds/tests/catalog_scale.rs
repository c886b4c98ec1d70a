//! The control plane's cluster-scale fixture (10,000 pods, 2,000 services) served by its real
//! ADS service over TCP and mutual TLS: the client receives and accepts every workload in
//! one first response larger than tonic's default 4 MiB decoding limit, and a client held to
//! that limit never syncs.

mod support;

use amesh_controlplane::{
    catalog::Catalog,
    fixtures::{PODS, SERVICES, scale_catalog},
};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, workload as pb};
use amesh_xds::{Applied, Changes, Client, Config, Handler, Observer, Termination};
use prost::Message;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use support::control_plane;
use tokio::sync::watch;
use tokio_rustls::rustls::ClientConfig;

const TONIC_DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

/// Parsing and translating 10,000 pods takes a while in a debug build: once per test binary.
fn catalog() -> Arc<Catalog> {
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG
        .get_or_init(|| Arc::new(scale_catalog().expect("the fixture reads cleanly")))
        .clone()
}

/// Counts the workloads and services it accepts.
#[derive(Clone, Default)]
struct Addresses(Arc<Mutex<(usize, usize)>>);

impl Handler for Addresses {
    type Resource = pb::address::Type;
    type Error = String;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<Self::Resource, String> {
        pb::Address::decode(bytes)
            .map_err(|e| e.to_string())?
            .r#type
            .ok_or_else(|| "empty address".to_string())
    }

    fn apply(&mut self, changes: Changes<Self::Resource>) {
        let mut counts = self.0.lock().expect("lock");
        for (_, a) in changes.updated {
            match a {
                pb::address::Type::Workload(_) => counts.0 += 1,
                pb::address::Type::Service(_) => counts.1 += 1,
            }
        }
    }
}

/// Accepts every authorization.
struct Authorizations;

impl Handler for Authorizations {
    type Resource = ();
    type Error = String;

    fn decode(&self, _name: &str, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn apply(&mut self, _changes: Changes<()>) {}
}

/// What the client reported.
#[derive(Default)]
struct Recorder {
    largest_response: Mutex<u64>,
    applied: Mutex<Vec<Applied>>,
    terminations: Mutex<Vec<Termination>>,
}

impl Observer for Recorder {
    fn response(&self, _type_url: &str, encoded_len: u64) {
        let mut largest = self.largest_response.lock().expect("lock");
        *largest = (*largest).max(encoded_len);
    }

    fn applied(&self, applied: &Applied) {
        self.applied.lock().expect("lock").push(applied.clone());
    }

    fn terminated(&self, reason: Termination) {
        self.terminations.lock().expect("lock").push(reason);
    }
}

struct Run {
    addresses: Addresses,
    recorder: Arc<Recorder>,
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(address: SocketAddr, tls: Arc<ClientConfig>, limit: Option<usize>) -> Run {
    let config = Config {
        address: address.to_string(),
        server_name: None,
        node_id: "ztunnel~10.0.0.1~ztunnel-scale.istio-system~istio-system.svc.cluster.local"
            .into(),
        metadata: Default::default(),
        credentials: Default::default(),
    };
    let addresses = Addresses::default();
    let recorder = Arc::new(Recorder::default());
    let mut client = Client::new(config)
        .wildcard(ADDRESS_TYPE_URL, addresses.clone())
        .wildcard(AUTHORIZATION_TYPE_URL, Authorizations)
        .observer(recorder.clone());
    if let Some(limit) = limit {
        client = client.max_message_size(limit);
    }
    let ready = client.handle().ready();
    let task = tokio::spawn(client.run(move || Ok(tls.clone())));
    Run {
        addresses,
        recorder,
        ready,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_pod_catalog_decodes_and_is_accepted() {
    let catalog = catalog();
    let (address, tls, _catalog) = control_plane(catalog.clone()).await;
    let mut run = start(address, tls, None);
    tokio::time::timeout(Duration::from_secs(120), run.ready.wait_for(|r| *r))
        .await
        .expect("synced within two minutes")
        .expect("client running");
    run.task.abort();

    let largest = *run.recorder.largest_response.lock().expect("lock");
    assert!(
        largest > TONIC_DEFAULT_LIMIT as u64,
        "the first Address response ({largest} bytes) must exceed tonic's default limit for \
         this test to show anything"
    );
    assert_eq!(
        *run.addresses.0.lock().expect("lock"),
        (PODS, SERVICES),
        "every workload and service received and accepted"
    );
    let applied = run.recorder.applied.lock().expect("lock");
    let addresses = applied
        .iter()
        .find(|a| a.type_url == ADDRESS_TYPE_URL)
        .expect("an Address response");
    assert!(addresses.rejected.is_empty(), "{:?}", addresses.rejected);
    assert_eq!(addresses.updated, catalog.types[ADDRESS_TYPE_URL].len());
    assert!(
        run.recorder.terminations.lock().expect("lock").is_empty(),
        "one stream, never broken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonics_default_limit_would_refuse_it() {
    let (address, tls, _catalog) = control_plane(catalog()).await;
    let run = start(address, tls, Some(TONIC_DEFAULT_LIMIT));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while run.recorder.terminations.lock().expect("lock").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the oversized response never failed the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.task.abort();
    assert_eq!(
        run.recorder.terminations.lock().expect("lock")[0],
        Termination::Error
    );
    assert!(!*run.ready.borrow(), "a client held to 4 MiB never syncs");
    assert_eq!(*run.addresses.0.lock().expect("lock"), (0, 0));
}
