//! The label values of Istio's TCP metrics that come from a fixed set, as types: a typo cannot
//! invent a new series, and every place that sets one names a variant. Each encodes as the
//! exact string Istio's ztunnel reports.

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

label_value!(Reporter, SecurityPolicy, ResponseFlag);
