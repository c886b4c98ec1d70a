//! Protocol types amesh shares with Istio, generated from the `.proto` files in `proto/`.
//! Field numbers, names and packages match Istio's so the bytes interoperate.
#![forbid(unsafe_code)]

/// ZDS: node agent ↔ ztunnel (`istio.workload.zds`).
pub mod zds {
    #![allow(missing_debug_implementations, clippy::all, reason = "generated code")]
    include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
}

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
}
