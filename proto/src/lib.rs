//! Protocol types amesh shares with Istio, generated from the `.proto` files in `proto/`.
//! Field numbers, names and packages match Istio's so the bytes interoperate.
#![forbid(unsafe_code)]

/// ZDS: node agent ↔ ztunnel (`istio.workload.zds`).
pub mod zds {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
}

/// Istio's workload-discovery API (`istio.workload`).
pub mod workload {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
}

/// Istio's L4 authorization (`istio.security`).
pub mod security {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
}

/// Envoy's delta aggregated discovery (`envoy.service.discovery.v3`).
pub mod discovery {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
}

/// Istio's CA service (`istio.v1.auth`).
pub mod ca {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
}

/// amesh's route resources for waypoints (`proto/route.proto`).
pub mod route {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/amesh.route.rs"));
}

/// Envoy's external authorization API (`envoy.service.auth.v3`), the subset a waypoint
/// speaks to an `envoyExtAuthzGrpc` provider.
pub mod ext_authz {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
}

/// The gRPC path of Envoy's external authorization check.
pub const EXT_AUTHZ_CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Type URL of amesh's route rules for waypoints.
pub const HTTP_ROUTE_TYPE_URL: &str = "type.googleapis.com/amesh.route.HttpRouteRule";
/// Type URL of amesh's policies for waypoints.
pub const WAYPOINT_POLICY_TYPE_URL: &str = "type.googleapis.com/amesh.route.WaypointPolicy";

/// Type URL of workload-discovery resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of authorization resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// The largest xDS message either side decodes or encodes: Istio's 200 MiB. tonic decodes
/// 4 MiB by default, less than the first `Address` response of a cluster of a few thousand
/// pods, or the first request of a client that reconnects holding one (it lists every
/// resource it holds). Defined here, below both the control plane and the proxies' client,
/// so the two ends cannot disagree.
pub const MAX_MESSAGE_SIZE: usize = 200 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::zds::*;
    use prost::Message;

    /// Bytes an Istio peer sends, written out by hand from the wire format: an `add` with uid
    /// "u1" and workload_info{name "n", namespace "ns", service_account "sa"}, then a
    /// `del` whose uid is field 2.
    #[test]
    fn field_numbers_match_istio() {
        let add = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "u1".into(),
                workload_info: Some(WorkloadInfo {
                    name: "n".into(),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }),
            })),
        };
        let want = [
            0x0a, 0x11, 0x0a, 0x02, b'u', b'1', 0x12, 0x0b, 0x0a, 0x01, b'n', 0x12, 0x02, b'n',
            b's', 0x1a, 0x02, b's', b'a',
        ];
        assert_eq!(add.encode_to_vec(), want);
        let del = WorkloadRequest {
            payload: Some(workload_request::Payload::Del(DelWorkload {
                uid: "u1".into(),
            })),
        };
        assert_eq!(del.encode_to_vec(), [0x12, 0x04, 0x12, 0x02, b'u', b'1']);
        let keep = WorkloadRequest {
            payload: Some(workload_request::Payload::Keep(KeepWorkload {
                uid: "u".into(),
            })),
        };
        assert_eq!(keep.encode_to_vec(), [0x2a, 0x03, 0x0a, 0x01, b'u']);
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        assert_eq!(hello.encode_to_vec(), [0x08, 0x01]);
        let nack = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack { error: "x".into() })),
        };
        assert_eq!(nack.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, b'x']);
    }

    /// Field numbers the workload and authorization APIs put on the wire (INTEROP B3).
    #[test]
    fn workload_and_authorization_field_numbers() {
        use crate::{security, workload};
        let w = workload::Workload {
            uid: "u".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            ..Default::default()
        };
        // uid is field 20 (tag 0xa2 0x01), addresses field 3, tunnel_protocol field 5.
        assert_eq!(
            w.encode_to_vec(),
            [0x1a, 0x04, 10, 0, 0, 1, 0x28, 0x01, 0xa2, 0x01, 0x01, b'u']
        );
        let a = workload::Address {
            r#type: Some(workload::address::Type::Workload(
                workload::Workload::default(),
            )),
        };
        assert_eq!(a.encode_to_vec(), [0x0a, 0x00]);
        let p = security::Authorization {
            name: "p".into(),
            dry_run: true,
            action: security::Action::Deny as i32,
            ..Default::default()
        };
        assert_eq!(
            p.encode_to_vec(),
            [0x0a, 0x01, b'p', 0x20, 0x01, 0x30, 0x01]
        );
        let m = security::Match {
            destination_ports: vec![8080],
            ..Default::default()
        };
        // Packed repeated uint32, field 9.
        assert_eq!(m.encode_to_vec(), [0x4a, 0x02, 0x90, 0x3f]);
    }
}
