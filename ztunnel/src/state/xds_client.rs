//! ztunnel's xDS client: one delta ADS stream to the control plane over mutual TLS, wildcard
//! subscriptions to Istio's `Address` and `Authorization` types.
//!
//! Every resource is validated on its own ([`super::xds::Resources`]); a response with bad
//! resources is NACKed naming each of them while the good ones apply. The state is published
//! once both types have had their first response (readiness waits for that) and after every
//! response since. When the control plane is away the last good state keeps serving; the
//! client reconnects with jittered exponential backoff and reports the versions it holds, so
//! the control plane sends only what changed meanwhile.

use super::{StateStore, xds::Resources};
use crate::{
    control::{Connector, Credentials},
    metrics::{XdsMetrics, XdsTerminationLabels, XdsUrlLabels},
};
use amesh_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
    discovery::{self as d, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient},
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{ClientConfig, pki_types::ServerName};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

/// The types ztunnel subscribes to.
const TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// gRPC status code INVALID_ARGUMENT, carried by a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `host:port`.
    pub address: String,
    /// Sent and checked when the control plane is verified by host name.
    pub server_name: Option<ServerName<'static>>,
    /// Sent as the node id, in Istio ztunnel's `ztunnel~<ip>~<name>.<ns>~<ns>.svc.cluster.local`
    /// shape.
    pub node_id: String,
    /// Node metadata (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, `CLUSTER_ID`).
    pub metadata: std::collections::BTreeMap<String, String>,
    pub credentials: Credentials,
    pub metrics: XdsMetrics,
}

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the stream's request side closed")]
    RequestsClosed,
}

impl XdsError {
    /// The `reason` label of `istio_xds_connection_terminations_total`.
    fn reason(&self) -> &'static str {
        match self {
            XdsError::Connect(_) => "ConnectionError",
            XdsError::Stream(_) | XdsError::RequestsClosed => "Error",
        }
    }
}

/// What the client holds across sessions.
#[derive(Debug, Default)]
struct Held {
    resources: Resources,
    /// Per type: accepted resource name → version (reported on reconnect).
    versions: HashMap<&'static str, HashMap<String, String>>,
    synced: HashSet<&'static str>,
}

/// Runs forever: connect, sync, and on any failure back off and reconnect. `tls` is called
/// for every connection so that the client certificate is fresh.
pub async fn run(
    config: XdsConfig,
    tls: impl Fn() -> Result<Arc<ClientConfig>, String> + Send + 'static,
    store: StateStore,
) {
    let mut held = Held::default();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(15));
    loop {
        let responses_before = held.synced.len();
        let outcome = match tls() {
            Ok(tls) => session(&config, tls, &mut held, &store).await,
            Err(e) => {
                warn!(error = %e, "no client certificate for the control plane");
                Ok(false)
            }
        };
        let (progressed, reason) = match outcome {
            Ok(progressed) => {
                info!(address = %config.address, "control plane closed the xDS stream");
                (progressed, "Complete")
            }
            Err(e) => {
                warn!(address = %config.address, error = %e, "xDS stream failed; serving the last good state");
                (false, e.reason())
            }
        };
        config
            .metrics
            .terminations
            .get_or_create(&XdsTerminationLabels { reason })
            .inc();
        if progressed || held.synced.len() > responses_before {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One stream. Returns whether any response arrived (which resets the backoff).
async fn session(
    config: &XdsConfig,
    tls: Arc<ClientConfig>,
    held: &mut Held,
    store: &StateStore,
) -> Result<bool, XdsError> {
    let connector = Connector {
        address: config.address.clone(),
        server_name: config.server_name.clone(),
        tls,
    };
    let channel = Endpoint::from_static("http://amesh-xds")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for type_url in TYPES {
        let request = d::DeltaDiscoveryRequest {
            node: Some(node(config)),
            type_url: type_url.to_string(),
            initial_resource_versions: held.versions.get(type_url).cloned().unwrap_or_default(),
            ..Default::default()
        };
        tx.send(request)
            .await
            .map_err(|_| XdsError::RequestsClosed)?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    config.credentials.apply(&mut request);
    let mut inbound = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    info!(address = %config.address, node = %config.node_id, "xDS stream open");
    let mut progressed = false;
    while let Some(response) = inbound.message().await? {
        progressed = true;
        let url = XdsUrlLabels {
            url: response.type_url.clone(),
        };
        config.metrics.messages.get_or_create(&url).inc();
        let size = u64::try_from(prost::Message::encoded_len(&response)).unwrap_or(u64::MAX);
        config
            .metrics
            .message_bytes
            .get_or_create(&url)
            .inc_by(size);
        let ack = apply(response, held);
        tx.send(ack).await.map_err(|_| XdsError::RequestsClosed)?;
        if TYPES.iter().all(|t| held.synced.contains(t)) {
            store.replace(held.resources.state());
        }
    }
    Ok(progressed)
}

/// Applies one response and returns its ACK, or its NACK naming every rejected resource.
fn apply(response: d::DeltaDiscoveryResponse, held: &mut Held) -> d::DeltaDiscoveryRequest {
    let Some(type_url) = TYPES.iter().copied().find(|t| *t == response.type_url) else {
        return nack(
            &response,
            format!("type {} is not subscribed", response.type_url),
        );
    };
    let versions: HashMap<String, String> = response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let updated: Vec<(String, Vec<u8>)> = response
        .resources
        .iter()
        .map(|r| {
            let bytes = r
                .resource
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            (r.name.clone(), bytes)
        })
        .collect();
    let removed = &response.removed_resources;
    let rejected = if type_url == ADDRESS_TYPE_URL {
        held.resources.apply_addresses(updated, removed)
    } else {
        held.resources.apply_authorizations(updated, removed)
    };
    let held_versions = held.versions.entry(type_url).or_default();
    for name in removed {
        held_versions.remove(name);
    }
    let bad: HashSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
    for (name, version) in versions {
        if !bad.contains(name.as_str()) {
            held_versions.insert(name, version);
        }
    }
    held.synced.insert(type_url);
    info!(
        type_url,
        nonce = %response.nonce,
        updated = response.resources.len() - rejected.len(),
        removed = removed.len(),
        rejected = rejected.len(),
        "xDS update applied"
    );
    if rejected.is_empty() {
        return d::DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: response.nonce,
            ..Default::default()
        };
    }
    for r in &rejected {
        warn!(type_url, resource = %r.name, reason = %r.reason, "resource rejected (NACK); its last good version stays");
    }
    let message = rejected
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    nack(&response, message)
}

fn nack(response: &d::DeltaDiscoveryResponse, message: String) -> d::DeltaDiscoveryRequest {
    d::DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(d::Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// The node as Istio's ztunnel describes itself.
fn node(config: &XdsConfig) -> d::Node {
    use prost_types::{Struct, Value, value::Kind};
    d::Node {
        id: config.node_id.clone(),
        cluster: config.credentials.cluster_id.clone(),
        metadata: Some(Struct {
            fields: config
                .metadata
                .iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    };
                    (k.clone(), value)
                })
                .collect(),
        }),
    }
}

/// Exponential backoff with jitter (each delay is 50–100 % of the current ceiling), so that
/// ztunnels losing the same control plane do not reconnect in step.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            ceiling: first,
        }
    }

    fn reset(&mut self) {
        self.ceiling = self.first;
    }

    fn next(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
        ceiling.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_proto::workload as pb;
    use prost::Message;

    fn address(name: &str, ip: &[u8]) -> d::Resource {
        let w = pb::Workload {
            uid: name.into(),
            name: name.into(),
            namespace: "ns".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        };
        d::Resource {
            name: name.into(),
            version: "v1".into(),
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

    #[test]
    fn bad_resources_are_nacked_by_name_and_the_rest_apply() {
        let mut held = Held::default();
        let response = d::DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "7".into(),
            resources: vec![
                address("good", &[10, 0, 0, 1]),
                address("bad", &[1, 2, 3, 4, 5]),
            ],
            ..Default::default()
        };
        let reply = apply(response, &mut held);
        assert_eq!(reply.response_nonce, "7");
        let error = reply.error_detail.expect("a NACK");
        assert!(error.message.starts_with("bad: "), "{}", error.message);
        assert!(!error.message.contains("good"), "{}", error.message);
        let versions = &held.versions[ADDRESS_TYPE_URL];
        assert_eq!(versions.get("good").map(String::as_str), Some("v1"));
        assert!(
            !versions.contains_key("bad"),
            "a rejected version is not reported as held"
        );
        assert_eq!(held.resources.state().workloads().count(), 1);

        let ok = apply(
            d::DeltaDiscoveryResponse {
                type_url: ADDRESS_TYPE_URL.into(),
                nonce: "8".into(),
                removed_resources: vec!["good".into()],
                ..Default::default()
            },
            &mut held,
        );
        assert!(ok.error_detail.is_none());
        assert!(held.versions[ADDRESS_TYPE_URL].is_empty());
    }

    #[test]
    fn unknown_types_are_nacked() {
        let reply = apply(
            d::DeltaDiscoveryResponse {
                type_url: "type.googleapis.com/other".into(),
                nonce: "1".into(),
                ..Default::default()
            },
            &mut Held::default(),
        );
        assert!(reply.error_detail.is_some());
    }

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(15));
        let first = b.next();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_secs(15));
        }
        assert!(b.next() >= Duration::from_millis(7500));
        b.reset();
        assert!(b.next() <= Duration::from_millis(10));
    }
}
