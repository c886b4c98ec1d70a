//! The waypoint's side of the far hop: the chosen endpoint, reached over HBONE with the
//! waypoint's own identity (the destination's ztunnel authorizes that identity), or over plain
//! TCP when the endpoint is not in the mesh.

use crate::proxy::Inputs;
use amesh_hbone::{HboneError, PoolKey};
use amesh_identity::{Identity, tls};
use amesh_state::{Client, Locality, Route, Service, Workload};
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

/// A byte stream to the endpoint.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where the traffic went.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub workload: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
    /// Reached over HBONE (mutual TLS).
    pub mtls: bool,
    /// The Service port the request was for (its DestinationRule's port-level settings).
    pub service_port: u16,
    /// The DestinationRule subset it was sent to, if one.
    pub subset: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy endpoint for {0}")]
    NoHealthyUpstream(String),
    #[error("{0} is on another network (not supported)")]
    OtherNetwork(String),
    #[error("the waypoint's certificate is not ready")]
    NoCertificate,
    #[error("HBONE to {addr}: {source}")]
    Hbone {
        addr: SocketAddr,
        source: HboneError,
    },
    #[error("connecting to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl UpstreamError {
    /// Envoy's response flag for it, as Istio's waypoint reports it.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::NoHealthyUpstream(_) | Self::OtherNetwork(_) => "UH",
            Self::NoCertificate | Self::Hbone { .. } | Self::Tcp { .. } => "UF",
        }
    }
}

/// How a picked endpoint is reached.
#[derive(Debug, Clone)]
pub enum Picked {
    /// HBONE to `addr` (its 15008) for `target`, expecting one of `expected` there.
    Hbone {
        addr: SocketAddr,
        target: SocketAddr,
        expected: Vec<Identity>,
    },
    /// Plain TCP: the endpoint is not in the mesh.
    Tcp(SocketAddr),
}

/// Service `key`'s VIP of `family`'s IP version (else its first) with `port`: where a
/// route's backend, a mirror or an external authorizer is sent.
pub fn service_address(
    inputs: &Inputs,
    key: &str,
    port: u16,
    family: SocketAddr,
) -> Option<SocketAddr> {
    let state = inputs.state.snapshot();
    let s = state.service(key)?;
    let vip = s
        .vips
        .iter()
        .find(|v| v.is_ipv4() == family.is_ipv4())
        .or_else(|| s.vips.first())?;
    Some(SocketAddr::new(*vip, port))
}

/// Picks the endpoint for `target` (a service VIP:port or a workload's ip:port), among
/// `only` these workloads when a subset is routed to.
pub fn pick(
    inputs: &Inputs,
    target: SocketAddr,
    only: Option<&[String]>,
) -> Result<(Picked, Endpoint), UpstreamError> {
    pick_with(inputs, target, only, None)
}

/// [`pick`], with the choice among the endpoints given (`hint`, a load balancer's), else
/// in turn.
pub fn pick_with(
    inputs: &Inputs,
    target: SocketAddr,
    only: Option<&[String]>,
    hint: Option<usize>,
) -> Result<(Picked, Endpoint), UpstreamError> {
    // Endpoints outlier detection ejected are not picked (if a policy asks for it).
    let excluded = {
        let state = inputs.state.snapshot();
        match state.service_by_vip(target.ip()) {
            Some(s)
                if inputs
                    .policies
                    .borrow()
                    .traffic(&s.key())
                    .is_some_and(|t| t.has_outlier_detection()) =>
            {
                inputs.outliers.ejected(&s.key())
            }
            _ => Vec::new(),
        }
    };
    let route = {
        let state = inputs.state.snapshot();
        let nowhere = Locality::default();
        let client = Client {
            node: "",
            locality: &nowhere,
            network: "",
            identity: Some(&inputs.me.identity),
            ip: None,
            only,
            excluded: &excluded,
        };
        let pick = hint.unwrap_or_else(|| inputs.next_pick.fetch_add(1, Ordering::Relaxed));
        state.route_past_waypoints(target, &client, pick)
    };
    match route {
        Route::Hbone {
            workload,
            service,
            target,
            hbone: addr,
            expected,
        } => Ok((
            Picked::Hbone {
                addr,
                target,
                expected,
            },
            Endpoint {
                addr: target,
                workload: Some(workload),
                service,
                mtls: true,
                service_port: target.port(),
                subset: None,
            },
        )),
        Route::Direct {
            dst,
            workload,
            service,
        } => Ok((
            Picked::Tcp(dst),
            Endpoint {
                addr: dst,
                workload,
                service,
                mtls: false,
                service_port: target.port(),
                subset: None,
            },
        )),
        Route::NoEndpoint { service } => {
            Err(UpstreamError::NoHealthyUpstream(service.hostname.clone()))
        }
        // An endpoint known by name only (a ServiceEntry's DNS endpoint): the waypoint does
        // not resolve names yet, and says so rather than guessing an address.
        Route::Resolve { service, .. } => {
            Err(UpstreamError::NoHealthyUpstream(service.hostname.clone()))
        }
        Route::OtherNetwork { workload, .. } => Err(UpstreamError::OtherNetwork(format!(
            "{}/{}",
            workload.namespace, workload.name
        ))),
        // `route_past_waypoints` never answers these.
        Route::Waypoint { .. } | Route::NoWaypoint { .. } => {
            Err(UpstreamError::NoHealthyUpstream(target.to_string()))
        }
    }
}

/// Opens a stream to a picked endpoint; `headers` go on the HBONE CONNECT.
pub async fn open(
    inputs: &Inputs,
    picked: &Picked,
    headers: http::HeaderMap,
) -> Result<Box<dyn Io>, UpstreamError> {
    match picked {
        Picked::Hbone {
            addr,
            target,
            expected,
        } => Ok(Box::new(
            hbone(inputs, expected.clone(), *addr, *target, headers).await?,
        )),
        Picked::Tcp(dst) => {
            let stream = inputs
                .net
                .connect(*dst)
                .await
                .map_err(|source| UpstreamError::Tcp { addr: *dst, source })?;
            Ok(Box::new(stream))
        }
    }
}

/// Picks the endpoint for `target` and opens a stream to it.
pub async fn connect(
    inputs: &Inputs,
    target: SocketAddr,
    headers: http::HeaderMap,
    only: Option<&[String]>,
) -> Result<(Box<dyn Io>, Endpoint), UpstreamError> {
    let (picked, endpoint) = pick(inputs, target, only)?;
    Ok((open(inputs, &picked, headers).await?, endpoint))
}

async fn hbone(
    inputs: &Inputs,
    expected: Vec<Identity>,
    addr: SocketAddr,
    target: SocketAddr,
    headers: http::HeaderMap,
) -> Result<amesh_hbone::PooledStream, UpstreamError> {
    let cert = inputs
        .certs
        .get(&inputs.me.identity)
        .ok_or(UpstreamError::NoCertificate)?;
    let key = PoolKey {
        src_pod: inputs.me.name.clone(),
        src: inputs.me.identity.clone(),
        dst: addr,
        dst_identities: expected.clone(),
    };
    let (bundle, net) = (inputs.bundle.clone(), &inputs.net);
    inputs
        .pool
        .connect(&key, &target.to_string(), headers, move || async move {
            let config = tls::client_config(&cert, &bundle, expected, tls::provider())
                .map_err(std::io::Error::other)?;
            let tcp = net.connect(addr).await?;
            TlsConnector::from(config)
                .connect(tls::server_name(addr.ip()), tcp)
                .await
        })
        .await
        .map_err(|source| UpstreamError::Hbone { addr, source })
}
