//! A Service port's application protocol as istiod reads it (`kube.ConvertProtocol`): the
//! port's `appProtocol` if set, else its name, up to the first `-` (`http-web` is HTTP);
//! well-known server-first ports (SMTP, DNS, MySQL, MongoDB) default to TCP.
//!
//! istiod sends only HTTP/1.1, HTTP/2 and gRPC in the workload API and leaves every other
//! protocol UNKNOWN. amesh also sends TCP and TLS, so that its waypoint relays such a port
//! at once instead of waiting to detect HTTP that a server-first protocol never sends; an
//! Istio ztunnel reads the values as the enum it already knows.

use amesh_proto::workload::AppProtocol;
use k8s_openapi::api::core::v1::ServicePort;

/// Ports istiod treats as TCP when nothing else is declared.
const WELL_KNOWN_TCP: [i32; 4] = [25, 53, 3306, 27017];

/// The protocol declared for `port`.
pub fn of(port: &ServicePort) -> AppProtocol {
    declared(
        port.port,
        port.name.as_deref().unwrap_or_default(),
        port.protocol.as_deref().unwrap_or("TCP"),
        port.app_protocol.as_deref(),
    )
}

/// A ServiceEntry port's protocol (`HTTP`, `GRPC`, `TCP`, ...), else its name, as istiod
/// reads it.
pub fn of_service_entry(number: u32, name: &str, protocol: Option<&str>) -> AppProtocol {
    declared(
        i32::try_from(number).unwrap_or(0),
        name,
        "TCP",
        protocol.filter(|p| !p.is_empty()),
    )
}

fn declared(number: i32, name: &str, transport: &str, app_protocol: Option<&str>) -> AppProtocol {
    if transport.eq_ignore_ascii_case("UDP") || transport.eq_ignore_ascii_case("SCTP") {
        return AppProtocol::Unknown;
    }
    let text = app_protocol.unwrap_or(name);
    // Kubernetes' own standard values (KEP-3726).
    match text {
        "kubernetes.io/h2c" => return AppProtocol::Http2,
        "kubernetes.io/ws" => return AppProtocol::Http11,
        "kubernetes.io/wss" => return AppProtocol::Tls,
        _ => {}
    }
    // `grpc-web` is a protocol of its own (HTTP/1.1 or HTTP/2 from browsers): left to
    // detection, as istiod leaves it out of the workload API.
    if text
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("grpc-web"))
    {
        return AppProtocol::Unknown;
    }
    let prefix = text.split('-').next().unwrap_or_default();
    match prefix.to_ascii_lowercase().as_str() {
        "http" | "http_proxy" => AppProtocol::Http11,
        "http2" => AppProtocol::Http2,
        "grpc" => AppProtocol::Grpc,
        "tcp" | "mongo" | "redis" | "mysql" => AppProtocol::Tcp,
        "tls" | "https" => AppProtocol::Tls,
        _ if WELL_KNOWN_TCP.contains(&number) => AppProtocol::Tcp,
        _ => AppProtocol::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_istiod_reads_them() {
        use AppProtocol::*;
        let cases: &[(i32, &str, &str, Option<&str>, AppProtocol)] = &[
            (80, "http", "TCP", None, Http11),
            (80, "http-web", "TCP", None, Http11),
            (80, "HTTP-web", "TCP", None, Http11),
            (80, "http2", "TCP", None, Http2),
            (80, "grpc-api", "TCP", None, Grpc),
            (80, "grpc-web", "TCP", None, Unknown),
            (80, "tcp-db", "TCP", None, Tcp),
            (80, "https", "TCP", None, Tls),
            (80, "web", "TCP", None, Unknown),
            (80, "", "TCP", None, Unknown),
            // appProtocol wins over the name.
            (80, "tcp", "TCP", Some("http"), Http11),
            (80, "http", "TCP", Some("kubernetes.io/h2c"), Http2),
            (80, "web", "TCP", Some("grpc"), Grpc),
            (80, "web", "TCP", Some("kubernetes.io/ws"), Http11),
            // Server-first well-known ports are TCP unless declared otherwise.
            (3306, "", "TCP", None, Tcp),
            (3306, "http", "TCP", None, Http11),
            (53, "dns", "TCP", None, Tcp),
            // UDP is never proxied as HTTP.
            (80, "http", "UDP", None, Unknown),
        ];
        for (number, name, transport, app, want) in cases {
            assert_eq!(
                declared(*number, name, transport, *app),
                *want,
                "port {number} name {name:?} protocol {transport} appProtocol {app:?}"
            );
        }
    }
}
