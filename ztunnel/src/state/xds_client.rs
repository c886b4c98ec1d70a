//! ztunnel's xDS client: amesh-xds's delta ADS client with wildcard subscriptions to Istio's
//! `Address` and `Authorization` types, handled by [`super::xds`]. The state is published
//! once both types have had their first response (readiness waits for that) and after every
//! response since; Istio's `istio_xds_*` metrics are counted here.

use super::{
    StateWriter,
    resources::{Resources, lock},
    xds::{AddressHandler, AuthorizationHandler},
};
use crate::metrics::{XdsMetrics, XdsTerminationLabels, XdsUrlLabels};
use amesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use amesh_xds::{Client, Config, Observer, Termination};
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls::ClientConfig;

/// Counts Istio's xDS client metrics.
struct Metrics(XdsMetrics);

impl Observer for Metrics {
    fn response(&self, type_url: &str, encoded_len: u64) {
        let url = XdsUrlLabels {
            url: type_url.to_string(),
        };
        self.0.messages.get_or_create(&url).inc();
        self.0.message_bytes.get_or_create(&url).inc_by(encoded_len);
    }

    fn terminated(&self, reason: Termination) {
        let labels = XdsTerminationLabels {
            reason: reason.reason(),
        };
        self.0.terminations.get_or_create(&labels).inc();
    }
}

/// The client built for ztunnel, publishing into `store`.
pub fn client(config: Config, metrics: XdsMetrics, store: StateWriter) -> Client {
    let resources = Arc::new(Mutex::new(Resources::default()));
    let published = resources.clone();
    Client::new(config)
        .wildcard(ADDRESS_TYPE_URL, AddressHandler(resources.clone()))
        .wildcard(AUTHORIZATION_TYPE_URL, AuthorizationHandler(resources))
        .observer(Arc::new(Metrics(metrics)))
        .on_synced(move || store.replace(lock(&published).state()))
}

/// Runs forever (see [`amesh_xds::Client::run`]). `tls` is called for every connection so
/// that the client certificate is fresh.
pub async fn run(
    config: Config,
    metrics: XdsMetrics,
    tls: impl Fn() -> Result<Arc<ClientConfig>, String> + Send + 'static,
    store: StateWriter,
) {
    client(config, metrics, store).run(tls).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_proto::{discovery as d, workload as pb};
    use amesh_xds::Subscriptions;
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

    /// ztunnel's handlers behind amesh-xds's bookkeeping: the NACK names the bad workload
    /// only, the good one is in the published state, and readiness waits for both types.
    #[test]
    fn bad_resources_are_nacked_by_name_and_the_rest_apply() {
        let resources = Arc::new(Mutex::new(Resources::default()));
        let mut subs = Subscriptions::default();
        subs.wildcard(ADDRESS_TYPE_URL, AddressHandler(resources.clone()));
        subs.wildcard(
            AUTHORIZATION_TYPE_URL,
            AuthorizationHandler(resources.clone()),
        );
        let (reply, _) = subs.respond(d::DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "7".into(),
            resources: vec![
                address("good", &[10, 0, 0, 1]),
                address("bad", &[1, 2, 3, 4, 5]),
            ],
            ..Default::default()
        });
        assert_eq!(reply.response_nonce, "7");
        let error = reply.error_detail.expect("a NACK");
        assert!(error.message.starts_with("bad: "), "{}", error.message);
        assert!(!error.message.contains("good"), "{}", error.message);
        let versions = subs.versions(ADDRESS_TYPE_URL).expect("subscribed");
        assert_eq!(versions.get("good").map(String::as_str), Some("v1"));
        assert!(!versions.contains_key("bad"));
        assert_eq!(lock(&resources).state().workloads().count(), 1);
        assert!(!subs.all_synced(), "Authorization has had no response yet");

        let (ok, _) = subs.respond(d::DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "8".into(),
            ..Default::default()
        });
        assert!(ok.error_detail.is_none());
        assert!(subs.all_synced());
    }
}
