//! The metadata Istio's ztunnel sends beside an HBONE CONNECT, so that the peer (another
//! ztunnel, a waypoint, or Istio's own proxies) can label its telemetry with who is calling:
//!
//! - `baggage` (W3C baggage) with the source workload: `k8s.cluster.name`,
//!   `k8s.namespace.name`, `k8s.<type>.name` (the workload kind: deployment, pod, job, cronjob),
//!   `service.name` and `service.version` (canonical service and revision), `cloud.region` and
//!   `cloud.availability_zone`. The server answers 200 with the same header describing itself.
//! - `traceparent` (W3C trace context), a fresh random trace per CONNECT.
//!
//! Baggage is informational: the identity always comes from the peer's certificate.

use http::{HeaderMap, HeaderValue};

pub const BAGGAGE: &str = "baggage";
pub const TRACEPARENT: &str = "traceparent";

/// What a workload says about itself in `baggage`. Empty fields are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    /// The workload's kind in lower case (`deployment`, `pod`, `job`, `cronjob`), naming the key
    /// `k8s.<kind>.name` the workload name goes under.
    pub workload_kind: String,
    pub workload_name: String,
    pub service_name: String,
    pub service_version: String,
    pub region: String,
    pub zone: String,
}

/// The keys a workload's name may come under, as Istio reads them.
const WORKLOAD_KEYS: [&str; 4] = [
    "k8s.deployment.name",
    "k8s.cronjob.name",
    "k8s.pod.name",
    "k8s.job.name",
];

impl Baggage {
    /// The header value, `key=value` pairs joined by commas, in Istio's order.
    pub fn header_value(&self) -> String {
        let kind = if self.workload_kind.is_empty() {
            "pod"
        } else {
            &self.workload_kind
        };
        let workload_key = format!("k8s.{kind}.name");
        [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (workload_key.as_str(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// The header, unless there is nothing to say (or a value could not be a header, which
    /// the workload's names, being Kubernetes names, never are). Built once per workload by
    /// its holder, it is then only cloned (a reference count) per CONNECT.
    pub fn to_header(&self) -> Option<HeaderValue> {
        let value = self.header_value();
        if value.is_empty() {
            return None;
        }
        HeaderValue::from_str(&value).ok()
    }

    /// Reads every `baggage` header in `headers`. Unknown keys, members without `=` and
    /// headers that are not text are ignored: baggage is a hint, never a reason to refuse.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut b = Self::default();
        for value in headers.get_all(BAGGAGE) {
            let Ok(text) = value.to_str() else { continue };
            for member in text.split(',') {
                // W3C baggage members may carry `;properties` after the value.
                let member = member.split(';').next().unwrap_or_default();
                let Some((key, val)) = member.split_once('=') else {
                    continue;
                };
                let (key, val) = (key.trim(), val.trim().to_string());
                match key {
                    "k8s.cluster.name" => b.cluster = val,
                    "k8s.namespace.name" => b.namespace = val,
                    "service.name" => b.service_name = val,
                    "service.version" => b.service_version = val,
                    "cloud.region" => b.region = val,
                    "cloud.availability_zone" => b.zone = val,
                    k if WORKLOAD_KEYS.contains(&k) => {
                        b.workload_kind = k["k8s.".len()..k.len() - ".name".len()].to_string();
                        b.workload_name = val;
                    }
                    _ => {}
                }
            }
        }
        b
    }
}

/// A fresh W3C `traceparent` (version 00, random trace and parent ids, not sampled), as
/// Istio's ztunnel starts one per CONNECT.
pub fn new_traceparent() -> HeaderValue {
    let trace = fastrand::u128(1..);
    let parent = fastrand::u64(1..);
    let text = format!("00-{trace:032x}-{parent:016x}-00");
    HeaderValue::from_str(&text).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Baggage {
        Baggage {
            cluster: "Kubernetes".into(),
            namespace: "shop".into(),
            workload_kind: "deployment".into(),
            workload_name: "cart".into(),
            service_name: "cart".into(),
            service_version: "v2".into(),
            region: "eu".into(),
            zone: "eu-1".into(),
        }
    }

    #[test]
    fn header_has_istios_keys_in_istios_order() {
        assert_eq!(
            full().header_value(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,\
             service.name=cart,service.version=v2,cloud.region=eu,cloud.availability_zone=eu-1"
        );
    }

    #[test]
    fn empty_fields_are_left_out_and_kind_defaults_to_pod() {
        let b = Baggage {
            namespace: "shop".into(),
            workload_name: "cart-abc".into(),
            ..Default::default()
        };
        assert_eq!(
            b.header_value(),
            "k8s.namespace.name=shop,k8s.pod.name=cart-abc"
        );
        assert_eq!(
            Baggage::default().to_header(),
            None,
            "nothing to say, no header"
        );
    }

    #[test]
    fn parse_reads_what_header_value_writes() {
        let mut h = HeaderMap::new();
        h.insert(BAGGAGE, full().to_header().unwrap());
        assert_eq!(Baggage::parse(&h), full());
    }

    #[test]
    fn parse_ignores_junk_and_reads_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            BAGGAGE,
            HeaderValue::from_static("k8s.job.name=backup;prop=1, bogus,x=y"),
        );
        h.append(
            BAGGAGE,
            HeaderValue::from_static("service.version = v9 ,=,k8s.cluster.name="),
        );
        h.append(
            BAGGAGE,
            HeaderValue::from_bytes(b"service.name=\xff").unwrap(),
        );
        let b = Baggage::parse(&h);
        assert_eq!(b.workload_kind, "job");
        assert_eq!(b.workload_name, "backup");
        assert_eq!(b.service_version, "v9");
        assert_eq!(b.cluster, "");
        assert_eq!(b.service_name, "", "a header that is not text is ignored");
    }

    #[test]
    fn traceparent_is_w3c_shaped_and_fresh() {
        let a = new_traceparent();
        let b = new_traceparent();
        let text = a.to_str().unwrap();
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(parts.len(), 4, "{text}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert!(
            parts[1..3]
                .iter()
                .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()))
        );
        assert_ne!(a, b, "each CONNECT starts its own trace");
    }
}
