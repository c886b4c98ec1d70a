use super::*;
use crate::handler::Changes;
use amesh_proto::{ADDRESS_TYPE_URL, workload as pb};
use prost::Message;
use std::sync::{Arc, Mutex};

/// Accepts workloads whose addresses have 4 or 16 bytes, as ztunnel does.
#[derive(Clone, Default)]
struct Workloads(Arc<Mutex<HashMap<String, pb::Workload>>>);

impl Handler for Workloads {
    type Resource = pb::Workload;
    type Error = String;

    fn decode(&self, _name: &str, bytes: &[u8]) -> Result<pb::Workload, String> {
        let address = pb::Address::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
        let Some(pb::address::Type::Workload(w)) = address.r#type else {
            return Err("not a workload".into());
        };
        match w.addresses.iter().find(|a| a.len() != 4 && a.len() != 16) {
            Some(a) => Err(format!("address has {} bytes", a.len())),
            None => Ok(w),
        }
    }

    fn apply(&mut self, changes: Changes<pb::Workload>) {
        let mut held = self.0.lock().expect("lock");
        for name in changes.removed {
            held.remove(&name);
        }
        held.extend(changes.updated);
    }
}

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
    let workloads = Workloads::default();
    let mut subs = Subscriptions::default();
    subs.wildcard(ADDRESS_TYPE_URL, workloads.clone());
    let response = d::DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "7".into(),
        resources: vec![
            address("good", &[10, 0, 0, 1]),
            address("bad", &[1, 2, 3, 4, 5]),
        ],
        ..Default::default()
    };
    let (reply, applied) = subs.respond(response);
    assert_eq!(reply.response_nonce, "7");
    let error = reply.error_detail.expect("a NACK");
    assert!(error.message.starts_with("bad: "), "{}", error.message);
    assert!(!error.message.contains("good"), "{}", error.message);
    let applied = applied.expect("applied");
    assert_eq!((applied.updated, applied.rejected.len()), (1, 1));
    let versions = subs.versions(ADDRESS_TYPE_URL).expect("subscribed");
    assert_eq!(versions.get("good").map(String::as_str), Some("v1"));
    assert!(
        !versions.contains_key("bad"),
        "a rejected version is not reported as held"
    );
    assert_eq!(workloads.0.lock().expect("lock").len(), 1);
    assert!(subs.all_synced());

    let (ok, _) = subs.respond(d::DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "8".into(),
        removed_resources: vec!["good".into()],
        ..Default::default()
    });
    assert!(ok.error_detail.is_none());
    assert!(
        subs.versions(ADDRESS_TYPE_URL)
            .expect("subscribed")
            .is_empty()
    );
    assert!(workloads.0.lock().expect("lock").is_empty());
}

#[test]
fn unknown_types_are_nacked() {
    let mut subs = Subscriptions::default();
    subs.wildcard(ADDRESS_TYPE_URL, Workloads::default());
    let (reply, applied) = subs.respond(d::DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/other".into(),
        nonce: "1".into(),
        ..Default::default()
    });
    assert!(reply.error_detail.is_some());
    assert!(applied.is_none());
    assert!(
        !subs.all_synced(),
        "an unknown type does not count as a response"
    );
}

#[test]
fn reconnect_reports_held_versions_and_names() {
    let mut subs = Subscriptions::default();
    subs.wildcard(ADDRESS_TYPE_URL, Workloads::default());
    subs.named(
        "type.example/Named",
        ["a".to_string()],
        Workloads::default(),
    );
    let node = d::Node::default();
    let first = subs.initial_requests(&node);
    assert_eq!(first.len(), 2);
    assert!(
        first[0].resource_names_subscribe.is_empty(),
        "a plain wildcard subscription asks with an empty list, as ztunnel always has"
    );
    assert_eq!(first[1].resource_names_subscribe, ["a"]);

    subs.respond(d::DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "1".into(),
        resources: vec![address("w", &[10, 0, 0, 1])],
        ..Default::default()
    });
    let more = subs
        .add_names("type.example/Named", ["a".to_string(), "b".to_string()])
        .expect("subscribed")
        .expect("b is new");
    assert_eq!(more.resource_names_subscribe, ["b"]);
    assert!(
        subs.add_names("type.example/Named", ["b".to_string()])
            .expect("subscribed")
            .is_none()
    );
    assert!(subs.add_names("type.example/Other", []).is_err());
    subs.add_names(ADDRESS_TYPE_URL, ["extra".to_string()])
        .expect("subscribed");

    let again = subs.initial_requests(&node);
    assert_eq!(again[0].resource_names_subscribe, ["*", "extra"]);
    assert_eq!(
        again[0]
            .initial_resource_versions
            .get("w")
            .map(String::as_str),
        Some("v1")
    );
    assert_eq!(again[1].resource_names_subscribe, ["a", "b"]);
}
