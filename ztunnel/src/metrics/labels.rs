//! Label values that come from a fixed set, as types: a typo cannot invent a new series, and
//! every place that sets one names a variant. Istio's encode as the exact string Istio's
//! ztunnel reports.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use std::fmt::{self, Write};

/// Which side of the connection reported it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The outbound side (the client's ztunnel).
    Source,
    /// The inbound side (the server's ztunnel).
    Destination,
}

/// `connection_security_policy`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Over HBONE.
    MutualTls,
    /// Plain TCP.
    Unknown,
}

/// Istio's (Envoy's) response flags, as amesh's ztunnel reports them.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlag {
    /// `-`: no failure.
    None,
    /// Refused by authorization or peer authentication.
    Deny,
    /// The connection could not be set up (upstream unreachable, no configuration yet).
    Connect,
    /// A service with no healthy endpoint.
    NoHealthyUpstream,
    /// No certificate for the identity the connection needs.
    IdentityError,
    /// The TLS handshake failed (certificate or identity mismatch).
    TlsFailure,
}

impl Reporter {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

impl SecurityPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::Unknown => "unknown",
        }
    }
}

impl ResponseFlag {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::Connect => "CONNECT",
            Self::NoHealthyUpstream => "NO_HEALTHY_UPSTREAM",
            Self::IdentityError => "IDENTITY_ERROR",
            Self::TlsFailure => "TLS_FAILURE",
        }
    }
}

/// Which of ztunnel's listeners: its own endpoints, or a pod's (summed over pods: a per-pod
/// label would grow without bound).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    Admin,
    Readiness,
    Metrics,
    /// A pod's 15001.
    Outbound,
    /// A pod's 15008.
    Hbone,
    /// A pod's 15006.
    Plaintext,
}

impl Listener {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Readiness => "readiness",
            Self::Metrics => "metrics",
            Self::Outbound => "outbound",
            Self::Hbone => "hbone",
            Self::Plaintext => "plaintext",
        }
    }
}

/// Why a connection was closed before any policy decision.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefuseReason {
    /// Aimed at one of ztunnel's own ports (it would loop).
    ZtunnelPort,
    /// Over `--max-hbone-handshakes`.
    HandshakeLimit,
    /// The pod's certificate is not ready.
    CertificateNotReady,
    /// An HBONE target that is not the pod the connection arrived for.
    NotThisPod,
    /// The capture kept no original destination for an outbound connection.
    NoOriginalDestination,
}

impl RefuseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ZtunnelPort => "ztunnel_port",
            Self::HandshakeLimit => "handshake_limit",
            Self::CertificateNotReady => "certificate_not_ready",
            Self::NotThisPod => "not_this_pod",
            Self::NoOriginalDestination => "no_original_destination",
        }
    }
}

/// The action of a policy, as Istio spells it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Deny,
}

impl From<amesh_policy::Action> for PolicyAction {
    fn from(a: amesh_policy::Action) -> Self {
        match a {
            // An AUDIT policy reaches ztunnel only as a dry-run ALLOW.
            amesh_policy::Action::Allow
            | amesh_policy::Action::Audit
            | amesh_policy::Action::Custom => Self::Allow,
            amesh_policy::Action::Deny => Self::Deny,
        }
    }
}

impl PolicyAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

label_value!(
    Reporter,
    SecurityPolicy,
    ResponseFlag,
    Listener,
    RefuseReason,
    PolicyAction
);
