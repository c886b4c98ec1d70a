//! Envoy's delta aggregated discovery service, as ztunnel speaks it: one stream per client,
//! wildcard or named subscriptions to the served types ([`subscription`]: Istio's ztunnel in
//! on-demand mode asks for addresses one name at a time), and after the first response only
//! what changed is pushed. ACKs and NACKs are matched by nonce; a NACK is logged with the client's reason
//! (the client keeps its last good version, and so does the control plane's record of what it
//! sent, so the resource is re-sent only when it changes again).

mod subscription;

use crate::{
    auth::{Authenticator, Peer},
    catalog::{Catalog, SERVED_TYPES},
};
use amesh_proto::{
    MAX_MESSAGE_SIZE,
    discovery::{
        self as d,
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
    },
};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use subscription::Subscription;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// The service: every stream reads the same published catalog.
#[derive(Debug, Clone)]
pub struct Ads {
    catalog: watch::Receiver<Arc<Catalog>>,
    nonces: Arc<AtomicU64>,
    auth: Authenticator,
}

impl Ads {
    pub fn new(catalog: watch::Receiver<Arc<Catalog>>, auth: Authenticator) -> Self {
        Self {
            catalog,
            nonces: Arc::default(),
            auth,
        }
    }

    /// The gRPC service, with Istio's message size limits ([`MAX_MESSAGE_SIZE`], what the
    /// proxies' client decodes). Encoding is bounded too: it is unbounded by default, and a
    /// response past what the client decodes would only fail there.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

type Responses = mpsc::Sender<Result<d::DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<d::DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<d::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = self.auth.authenticate(&request).await?;
        debug!(?caller, "xDS stream authenticated");
        let peer = request.extensions().get::<Peer>().cloned();
        let (tx, rx) = mpsc::channel(16);
        let subscriber = Subscriber {
            peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            node: String::new(),
            waypoint: None,
            catalog: self.catalog.clone(),
            nonces: self.nonces.clone(),
            subscriptions: HashMap::new(),
        };
        tokio::spawn(subscriber.run(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The waypoint a client says it is: node metadata `WAYPOINT` (its Service's host name) in
/// `NAMESPACE`, as amesh's waypoint sends them.
fn waypoint_of(node: &d::Node) -> Option<String> {
    let fields = &node.metadata.as_ref()?.fields;
    let text = |key: &str| match fields.get(key)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Some(format!("{}/{}", text("NAMESPACE")?, text("WAYPOINT")?))
}

/// One client stream.
struct Subscriber {
    peer: String,
    node: String,
    /// A waypoint's `namespace/hostname` (from its node metadata): it gets only its routes.
    waypoint: Option<String>,
    catalog: watch::Receiver<Arc<Catalog>>,
    nonces: Arc<AtomicU64>,
    /// Per subscribed type: what the client asked for and holds.
    subscriptions: HashMap<String, Subscription>,
}

impl Subscriber {
    async fn run(mut self, mut inbound: Streaming<d::DeltaDiscoveryRequest>, tx: Responses) {
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.on_request(req, &tx).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(peer = %self.peer, node = %self.node, %status, "xDS stream ended");
                        break;
                    }
                },
                changed = self.catalog.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.catalog.borrow_and_update();
                    let types: Vec<String> = self.subscriptions.keys().cloned().collect();
                    for t in types {
                        if self.push(&t, false, &tx).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        info!(peer = %self.peer, node = %self.node, "xDS client disconnected");
    }

    async fn on_request(
        &mut self,
        req: d::DeltaDiscoveryRequest,
        tx: &Responses,
    ) -> Result<(), ()> {
        if let Some(node) = &req.node
            && self.node.is_empty()
        {
            self.node = node.id.clone();
            self.waypoint = waypoint_of(node);
            info!(peer = %self.peer, node = %self.node, waypoint = ?self.waypoint, "xDS client connected");
        }
        if !SERVED_TYPES.contains(&req.type_url.as_str()) {
            warn!(node = %self.node, type_url = %req.type_url, "subscription to a type this control plane does not serve; ignored");
            return Ok(());
        }
        if let Some(error) = &req.error_detail {
            warn!(node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce, reason = %error.message, "client rejected resources (NACK)");
        } else if !req.response_nonce.is_empty() {
            debug!(node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce, "ACK");
        }
        match self.subscriptions.get_mut(&req.type_url) {
            // The type's first request on this stream (possibly a reconnect: the client says
            // what it already holds, so only the difference is sent).
            None => {
                self.subscriptions
                    .insert(req.type_url.clone(), Subscription::first(&req));
                self.push(&req.type_url, true, tx).await
            }
            // Any later request may change what is subscribed (on-demand names come without
            // a nonce); an ACK or NACK alone changes nothing.
            Some(subscription) => {
                if subscription.change(&req) {
                    self.push(&req.type_url, false, tx).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Sends what changed for `type_url`; the first response is sent even when empty, since a
    /// client counts the type as synced only when it has one.
    async fn push(&mut self, type_url: &str, first: bool, tx: &Responses) -> Result<(), ()> {
        let catalog = self.catalog.borrow().clone();
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(());
        };
        let waypoint = self.waypoint.as_deref();
        let in_scope = |name: &str| catalog.in_scope(type_url, name, waypoint);
        let delta = subscription.next(&catalog, type_url, &in_scope);
        if delta.is_empty() && !first {
            return Ok(());
        }
        let nonce = self.nonces.fetch_add(1, Ordering::Relaxed).to_string();
        let response = d::DeltaDiscoveryResponse {
            system_version_info: String::new(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            removed_resources: delta.removed.clone(),
            resources: delta
                .updated
                .iter()
                .map(|(name, e)| d::Resource {
                    name: name.clone(),
                    version: e.version.clone(),
                    resource: Some(prost_types::Any {
                        type_url: type_url.to_string(),
                        value: e.bytes.clone(),
                    }),
                    ..Default::default()
                })
                .collect(),
        };
        info!(node = %self.node, type_url, %nonce, updated = delta.updated.len(), removed = delta.removed.len(), "push");
        tx.send(Ok(response)).await.map_err(|_| ())
    }
}
