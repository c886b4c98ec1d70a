//! Why a connection failed, one enum per direction. Each error knows its Istio response flag
//! and (inbound HBONE) the HTTP status the CONNECT is answered with, by exhaustive matches:
//! a new way to fail cannot be added without deciding both.

use crate::metrics::ResponseFlag;
use amesh_hbone::HboneError;
use amesh_identity::Identity;
use http::StatusCode;
use std::net::SocketAddr;

/// Why a connection is refused before ztunnel has its first configuration (xDS not yet
/// synced): without it ztunnel cannot tell mesh destinations from others, nor know the
/// policies, so it refuses rather than guess (which would mean plaintext).
pub const NOT_CONFIGURED: &str =
    "no configuration from the control plane yet: refused (fail closed)";

/// Why an inbound connection (HBONE on 15008, plaintext on 15006) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("HBONE target {0} is not this pod")]
    NotThisPod(String),
    #[error("refused: a connection to one of ztunnel's own ports would loop")]
    ZtunnelPort,
    #[error("{NOT_CONFIGURED}")]
    NotConfigured,
    #[error("denied by {by}")]
    Denied { by: String },
    #[error("app unreachable: {0}")]
    AppUnreachable(std::io::Error),
    #[error("answering CONNECT: {0}")]
    Answer(HboneError),
}

impl InboundError {
    pub fn response_flag(&self) -> ResponseFlag {
        match self {
            Self::Denied { .. } => ResponseFlag::Deny,
            Self::NotThisPod(_)
            | Self::ZtunnelPort
            | Self::NotConfigured
            | Self::AppUnreachable(_)
            | Self::Answer(_) => ResponseFlag::Connect,
        }
    }

    /// The status an HBONE CONNECT is refused with (plaintext connections are just closed).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotThisPod(_) => StatusCode::BAD_REQUEST,
            Self::Denied { .. } => StatusCode::UNAUTHORIZED,
            Self::ZtunnelPort | Self::NotConfigured | Self::AppUnreachable(_) | Self::Answer(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Why an outbound connection (a pod's own, on 15001) failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{NOT_CONFIGURED}")]
    NotConfigured,
    #[error("no certificate for {0} yet")]
    NoCertificate(Identity),
    #[error("hbone to {addr}: {source}")]
    Hbone {
        addr: SocketAddr,
        source: HboneError,
    },
    #[error("connect failed: {0}")]
    Direct(std::io::Error),
    #[error("no healthy endpoint for service {service}")]
    NoHealthyUpstream { service: String },
    /// Istio would go through the network's gateway; amesh has no multi-network support yet.
    #[error(
        "{workload} is on network {network:?}, reachable only through a network gateway, which amesh does not support yet"
    )]
    OtherNetwork { workload: String, network: String },
    /// The destination is bound to a waypoint that has no ready pod (or is unknown): Istio's
    /// ztunnel fails such connections too, never sending around the waypoint.
    #[error(
        "waypoint {waypoint} for {destination} has no ready instance: refused, not sent around it"
    )]
    NoWaypoint {
        waypoint: String,
        destination: String,
    },
    /// A service endpoint known by name could not be resolved.
    #[error("resolving endpoint {hostname}: {reason}")]
    Resolve { hostname: String, reason: String },
    /// `--outbound-traffic-policy REGISTRY_ONLY` (Istio's mesh-wide setting): the
    /// destination is neither a workload of the mesh nor a service it knows.
    #[error(
        "outbound traffic policy REGISTRY_ONLY: {destination} is neither a mesh workload nor a registered service"
    )]
    RegistryOnly { destination: SocketAddr },
}

impl OutboundError {
    pub fn response_flag(&self) -> ResponseFlag {
        match self {
            Self::NotConfigured | Self::Direct(_) | Self::OtherNetwork { .. } => {
                ResponseFlag::Connect
            }
            Self::NoWaypoint { .. } => ResponseFlag::NoHealthyUpstream,
            Self::Resolve { .. } => ResponseFlag::Connect,
            Self::RegistryOnly { .. } => ResponseFlag::Deny,
            Self::NoCertificate(_) => ResponseFlag::IdentityError,
            Self::NoHealthyUpstream { .. } => ResponseFlag::NoHealthyUpstream,
            Self::Hbone { source, .. } => hbone_flag(source),
        }
    }
}

/// The flag for a tunnel that could not be opened: the peer's 401 is a denial; tokio-rustls
/// reports certificate and handshake failures as `InvalidData`.
fn hbone_flag(e: &HboneError) -> ResponseFlag {
    match e {
        HboneError::Status(s) if *s == StatusCode::UNAUTHORIZED => ResponseFlag::Deny,
        HboneError::Connect(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            ResponseFlag::TlsFailure
        }
        _ => ResponseFlag::Connect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_inbound_failure_has_its_flag_and_status() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases = [
            (InboundError::NotThisPod("x".into()), "CONNECT", 400),
            (InboundError::ZtunnelPort, "CONNECT", 503),
            (InboundError::NotConfigured, "CONNECT", 503),
            (InboundError::Denied { by: "p".into() }, "DENY", 401),
            (InboundError::AppUnreachable(io()), "CONNECT", 503),
        ];
        for (e, flag, status) in cases {
            assert_eq!(e.response_flag().as_str(), flag, "{e}");
            assert_eq!(e.status().as_u16(), status, "{e}");
        }
    }

    #[test]
    fn outbound_tunnel_failures_are_told_apart() {
        let addr: SocketAddr = "10.0.0.1:15008".parse().unwrap();
        let hbone = |source| OutboundError::Hbone { addr, source };
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad certificate");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            hbone(HboneError::Status(StatusCode::UNAUTHORIZED)).response_flag(),
            ResponseFlag::Deny
        );
        assert_eq!(
            hbone(HboneError::Connect(tls)).response_flag(),
            ResponseFlag::TlsFailure
        );
        assert_eq!(
            hbone(HboneError::Connect(refused)).response_flag(),
            ResponseFlag::Connect
        );
        let no_cert = OutboundError::NoCertificate(Identity::new("cluster.local", "ns", "sa"));
        assert_eq!(no_cert.response_flag(), ResponseFlag::IdentityError);
        let none = OutboundError::NoHealthyUpstream {
            service: "s".into(),
        };
        assert_eq!(none.response_flag().as_str(), "NO_HEALTHY_UPSTREAM");
        let far = OutboundError::OtherNetwork {
            workload: "ns/w".into(),
            network: "west".into(),
        };
        assert_eq!(far.response_flag(), ResponseFlag::Connect);
        assert!(far.to_string().contains("network gateway"), "{far}");
    }
}
