//! A control plane that sends one malformed resource (a workload with a 5-byte address)
//! next to a good one: ztunnel NACKs it by name, applies its sibling, and becomes ready.
//! The control plane here is scripted (the amesh control plane never produces bad bytes).

use crate::support::*;
use amesh_controlplane::serve;
use amesh_identity::{Identity, LocalCa, tls};
use amesh_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
    discovery::{
        self as d,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
    workload as pb,
};
use prost::Message;
use std::{sync::mpsc as std_mpsc, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Answers each subscription once with `responses[type]`, and reports every ACK/NACK.
struct Scripted {
    acks: std_mpsc::Sender<d::DeltaDiscoveryRequest>,
}

fn workload(name: &str, ip: &[u8]) -> d::Resource {
    let w = pb::Workload {
        uid: format!("Kubernetes//v1/Pod/ns-x/{name}"),
        name: name.into(),
        namespace: "ns-x".into(),
        addresses: vec![ip.to_vec()],
        ..Default::default()
    };
    d::Resource {
        name: w.uid.clone(),
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: pb::Address {
                r#type: Some(pb::address::Type::Workload(w)),
            }
            .encode_to_vec(),
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<d::DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<d::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let acks = self.acks.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if !req.response_nonce.is_empty() {
                    let _ = acks.send(req);
                    continue;
                }
                let resources = if req.type_url == ADDRESS_TYPE_URL {
                    vec![
                        workload("good", &[10, 99, 0, 1]),
                        workload("bad", &[1, 2, 3, 4, 5]),
                    ]
                } else {
                    Vec::new()
                };
                let response = d::DeltaDiscoveryResponse {
                    nonce: format!("n-{}", req.type_url.rsplit('.').next().unwrap_or("")),
                    type_url: req.type_url,
                    resources,
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[test]
fn a_malformed_resource_is_nacked_by_name_and_its_sibling_applies() {
    amesh_testbed::require_root();
    let mut mesh = Mesh::try_build(&[pod("a", "ns-a", "node1")]).expect("build the mesh");
    // The scripted control plane gets its certificate from the mesh CA the ztunnel uses.
    let ca = LocalCa::load_or_create(&mesh.dir.join("ca"), "cluster.local").expect("CA");
    let cert = ca
        .issue(
            &Identity::new("cluster.local", "istio-system", "istiod"),
            Duration::from_secs(3600),
        )
        .expect("serving cert");
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()]).expect("bundle");
    let server_tls = tls::server_config(&cert, &bundle, tls::provider()).expect("tls");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    mesh.xds = Some(listener.local_addr().expect("addr"));
    let (acks_tx, acks) = std_mpsc::channel();
    runtime.spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(
                AggregatedDiscoveryServiceServer::new(Scripted { acks: acks_tx }),
                serve::incoming(listener, server_tls, serve::DEFAULT_MAX_HANDSHAKES),
            )
            .await;
    });

    mesh.try_start(&[]).expect("start the node");
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let reply = acks
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "no ACK/NACK; ztunnel log:\n{}",
                    mesh.node("node1").ztunnel.log()
                )
            });
        replies.push(reply);
    }
    let address = replies
        .iter()
        .find(|r| r.type_url == ADDRESS_TYPE_URL)
        .expect("a reply to the Address response");
    let nack = address
        .error_detail
        .as_ref()
        .expect("the Address response is NACKed");
    assert_eq!(address.response_nonce, "n-Address");
    assert!(
        nack.message.contains("Kubernetes//v1/Pod/ns-x/bad") && !nack.message.contains("/good"),
        "the NACK names the bad resource only: {}",
        nack.message
    );
    let authz = replies
        .iter()
        .find(|r| r.type_url == AUTHORIZATION_TYPE_URL)
        .expect("a reply to the Authorization response");
    assert!(
        authz.error_detail.is_none(),
        "the empty Authorization response is ACKed"
    );

    mesh.try_wait_ready("node1")
        .expect("ready after both types synced");
    let (_, dump) = mesh
        .node("node1")
        .ztunnel
        .http("Admin", "GET", "/config_dump");
    let v: serde_json::Value = serde_json::from_str(&dump).expect("json");
    let names: Vec<&str> = v["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["good"],
        "the sibling applied, the bad one did not:\n{dump}"
    );
    drop(runtime);
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
