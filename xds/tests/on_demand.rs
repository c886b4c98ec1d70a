//! Istio's ztunnel with `XDS_ON_DEMAND=true`, as it speaks to the control plane: `Address`
//! subscribed to nothing (`*` subscribed and unsubscribed at once), then one name at a time
//! without a nonce. The control plane's real ADS service answers each name with the resource,
//! or with the name in `removed_resources` when it does not exist, and from then on pushes
//! changes of the subscribed names only. (Before, such a request reset the stream's state and
//! an unknown name was never answered, so the client waited forever.)

mod support;

use amesh_controlplane::{catalog::Catalog, translate::Resources};
use amesh_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
    discovery::{self as d, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient},
    workload as pb,
};
use amesh_xds::control::Connector;
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// A catalog of workloads `(name, last address byte)`.
fn catalog(workloads: &[(&str, u8)]) -> Arc<Catalog> {
    let mut r = Resources::default();
    for (name, ip) in workloads {
        let w = pb::Workload {
            uid: format!("Kubernetes//v1/Pod/ns/{name}"),
            name: name.to_string(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, *ip]],
            ..Default::default()
        };
        r.addresses.insert(
            w.uid.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Workload(w)),
            },
        );
    }
    Arc::new(Catalog::from_resources(&r))
}

fn uid(name: &str) -> String {
    format!("Kubernetes//v1/Pod/ns/{name}")
}

fn request(type_url: &str, sub: &[&str], unsub: &[&str]) -> d::DeltaDiscoveryRequest {
    d::DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The next Address response: (resource names, removed names).
async fn next_address(
    responses: &mut tonic::Streaming<d::DeltaDiscoveryResponse>,
) -> (Vec<String>, Vec<String>) {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("an answer within 10 s (an unanswered name would hang the client)")
            .expect("stream open")
            .expect("a response");
        if r.type_url == ADDRESS_TYPE_URL {
            let names = r.resources.into_iter().map(|x| x.name).collect();
            return (names, r.removed_resources);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscriptions_are_answered_one_by_one() {
    let (address, tls, catalog_tx) = support::control_plane(catalog(&[("a", 1), ("b", 2)])).await;
    let connector = Connector {
        address: address.to_string(),
        tls,
        server_name: None,
    };
    let channel = Endpoint::from_static("http://control-plane")
        .connect_with_connector(connector)
        .await
        .expect("connected");
    let (tx, rx) = mpsc::channel(8);
    let mut first = request(ADDRESS_TYPE_URL, &["*"], &["*"]);
    first.node = Some(d::Node {
        id: "ztunnel~10.0.0.9~ztunnel-x.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    });
    tx.send(first).await.unwrap();
    tx.send(request(AUTHORIZATION_TYPE_URL, &[], &[]))
        .await
        .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        next_address(&mut responses).await,
        (vec![], vec![]),
        "subscribed to nothing: an empty first answer"
    );

    tx.send(request(ADDRESS_TYPE_URL, &[&uid("a")], &[]))
        .await
        .unwrap();
    assert_eq!(next_address(&mut responses).await, (vec![uid("a")], vec![]));
    tx.send(request(ADDRESS_TYPE_URL, &[&uid("nobody")], &[]))
        .await
        .unwrap();
    assert_eq!(
        next_address(&mut responses).await,
        (vec![], vec![uid("nobody")]),
        "an unknown name is answered as removed"
    );

    // Both workloads change: only the subscribed one is pushed.
    catalog_tx.send_replace(catalog(&[("a", 11), ("b", 12)]));
    assert_eq!(next_address(&mut responses).await, (vec![uid("a")], vec![]));
    // The name that did not exist appears: pushed, since it is subscribed.
    catalog_tx.send_replace(catalog(&[("a", 11), ("b", 12), ("nobody", 3)]));
    assert_eq!(
        next_address(&mut responses).await,
        (vec![uid("nobody")], vec![])
    );
}
