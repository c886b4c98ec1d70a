//! Inbound: HBONE (15008) from other pods' ztunnels, and plaintext (15006) from outside the
//! mesh. Policy decides before any byte reaches the app; allowed connections end in a
//! connection to the app made inside the pod, and are re-checked when policies change.

use super::{
    PodCtx, ProxyInputs,
    authz::{Facts, LiveGuard, authorize},
    error::InboundError,
    inputs::CERT_WAIT,
    record::ConnRecord,
    relay,
};
use crate::{
    metrics::{Listener, RefuseReason, Reporter, SecurityPolicy, TcpLabels},
    signal::Stop,
    state::{State, Workload},
};
use amesh_hbone::{
    metadata::Baggage,
    server::{self, IncomingConnect, Target},
};
use amesh_identity::{identity_of, tls};
use amesh_policy::Decision;
use amesh_ratelimit::{Throttle, WARN_EVERY};
use http::HeaderMap;
use prometheus_client::metrics::gauge::Gauge;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{Instrument, debug, info_span, warn};

/// The ports ztunnel listens on inside every pod (outbound, plaintext inbound, HBONE):
/// forwarding a connection to one of them would send it straight back to ztunnel, forever,
/// so such connections are refused (503, as Istio's ztunnel answers its `illegal_ports`).
/// Other 150xx ports are the app's: ztunnel's admin and metrics listen in its own netns.
const ZTUNNEL_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Bound on the TLS handshake of an inbound HBONE connection.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

// Warnings anyone who reaches a pod can trigger, each logged at a bounded rate (counted in
// `amesh_connections_refused_total` every time).
static PLAINTEXT_LOOP_WARNING: Throttle = Throttle::new(WARN_EVERY);
static CONNECT_LOOP_WARNING: Throttle = Throttle::new(WARN_EVERY);
static HANDSHAKE_LIMIT_WARNING: Throttle = Throttle::new(WARN_EVERY);
static CERT_NOT_READY_WARNING: Throttle = Throttle::new(WARN_EVERY);

fn is_ztunnel_port(port: u16) -> bool {
    ZTUNNEL_PORTS.contains(&port)
}

/// The TLS server config presenting the pod's current certificate.
async fn server_config(inputs: &ProxyInputs, pod: &PodCtx) -> Option<Arc<rustls::ServerConfig>> {
    let cert = inputs
        .trust
        .certs
        .wait_ready(&pod.identity, CERT_WAIT)
        .await?;
    let mut cached = pod.server_tls.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((c, cfg)) = cached.as_ref()
        && Arc::ptr_eq(c, &cert)
    {
        return Some(cfg.clone());
    }
    let cfg =
        tls::server_config(&cert, &inputs.trust.bundle, inputs.trust.provider.clone()).ok()?;
    *cached = Some((cert, cfg.clone()));
    Some(cfg)
}

pub async fn handle_hbone(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    conn: TcpStream,
    peer: SocketAddr,
) {
    // The listener is dual-stack: IPv4 peers arrive as `::ffff:a.b.c.d`.
    let peer = canonical(peer);
    let Ok(local) = conn.local_addr() else { return };
    let Some(tls) = handshake(&inputs, &pod, conn, peer).await else {
        return;
    };
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let Some(peer_identity) = cert.and_then(|c| identity_of(c).ok()) else {
        return;
    };
    let pod_ip = local.ip().to_canonical();
    let handler = {
        let (inputs, pod) = (inputs.clone(), pod.clone());
        move |req: IncomingConnect| {
            let (inputs, pod) = (inputs.clone(), pod.clone());
            async move { connect_app(inputs, pod, req, peer, pod_ip).await }
        }
    };
    let _ = server::serve(tls, peer_identity, handler, inputs.drain.clone().started()).await;
}

/// The mutual-TLS handshake of an inbound HBONE connection, within the node-wide bound on
/// handshakes in progress: over it, the connection is closed at once (and counted).
async fn handshake(
    inputs: &ProxyInputs,
    pod: &PodCtx,
    conn: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let Some(_slot) = HandshakeSlot::take(inputs) else {
        inputs
            .metrics
            .listeners
            .refuse(Listener::Hbone, RefuseReason::HandshakeLimit);
        if let Some(suppressed) = HANDSHAKE_LIMIT_WARNING.allow() {
            warn!(pod = %pod.name, %peer, suppressed, "refusing HBONE: too many TLS handshakes in progress (see --max-hbone-handshakes)");
        }
        return None;
    };
    // Fail closed: no certificate, no TLS, no traffic.
    let Some(config) = server_config(inputs, pod).await else {
        inputs
            .metrics
            .listeners
            .refuse(Listener::Hbone, RefuseReason::CertificateNotReady);
        if let Some(suppressed) = CERT_NOT_READY_WARNING.allow() {
            warn!(pod = %pod.name, %peer, suppressed, "refusing HBONE: the pod's certificate is not ready");
        }
        return None;
    };
    // A peer that never finishes its handshake must not hold a task (and drain) forever.
    let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(conn));
    match accept.await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(error)) => {
            debug!(pod = %pod.name, %peer, %error, "HBONE TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(pod = %pod.name, %peer, "HBONE TLS handshake timed out");
            None
        }
    }
}

/// One of the `--max-hbone-handshakes` permits, shown in
/// `amesh_hbone_handshakes_in_progress` while it is held.
struct HandshakeSlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    gauge: &'a Gauge,
}

impl<'a> HandshakeSlot<'a> {
    fn take(inputs: &'a ProxyInputs) -> Option<Self> {
        let permit = inputs.handshakes.try_acquire().ok()?;
        let gauge = &inputs.metrics.hbone.handshakes_in_progress;
        gauge.inc();
        Some(Self {
            _permit: permit,
            gauge,
        })
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`) as plain IPv4: the same
/// endpoint, written one way everywhere (routing, policy, logs, metrics).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Answers one CONNECT: 400 unless it targets this pod, 401 if policy refuses, 503 if the app
/// is unreachable, else 200 and the bytes. Runs in a span naming both ends.
async fn connect_app(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    req: IncomingConnect,
    peer: SocketAddr,
    pod_ip: IpAddr,
) {
    let target = match hbone_target(&inputs, &pod, &req, pod_ip) {
        Ok(t) => t,
        Err(e) => return req.refuse(e.status()),
    };
    let span = info_span!(
        "inbound",
        pod = %pod.name,
        src = %peer,
        dst = %target,
        src.identity = %req.peer_identity,
        dst.identity = %pod.identity,
    );
    serve_connect(inputs, pod, req, peer, target)
        .instrument(span)
        .await
}

/// The CONNECT's target, canonical, if it is this pod and not one of ztunnel's own ports.
/// These refusals come before a connection record exists: counted and logged here.
fn hbone_target(
    inputs: &ProxyInputs,
    pod: &PodCtx,
    req: &IncomingConnect,
    pod_ip: IpAddr,
) -> Result<SocketAddr, InboundError> {
    let target = match &req.target {
        // `[::ffff:<pod IPv4>]:port` names this pod too; from here on it is the IPv4 form.
        Target::Addr(a) if a.ip().to_canonical() == pod_ip => canonical(*a),
        other => {
            inputs
                .metrics
                .listeners
                .refuse(Listener::Hbone, RefuseReason::NotThisPod);
            let e = InboundError::NotThisPod(format!("{other:?}"));
            debug!(pod = %pod.name, error = %e, "refusing a CONNECT");
            return Err(e);
        }
    };
    if is_ztunnel_port(target.port()) {
        inputs
            .metrics
            .listeners
            .refuse(Listener::Hbone, RefuseReason::ZtunnelPort);
        if let Some(suppressed) = CONNECT_LOOP_WARNING.allow() {
            warn!(pod = %pod.name, %target, suppressed, "refusing a CONNECT to one of ztunnel's own ports (it would loop)");
        }
        return Err(InboundError::ZtunnelPort);
    }
    Ok(target)
}

async fn serve_connect(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    req: IncomingConnect,
    peer: SocketAddr,
    target: SocketAddr,
) {
    let mut record = ConnRecord::new(
        inputs.metrics.tcp.clone(),
        TcpLabels::new(Reporter::Destination),
        peer,
        target,
    );
    // As Istio's ztunnel: what the caller's baggage says, overridden by the workload the
    // state has at its address; the principal only ever from its certificate.
    let state = inputs.state.snapshot();
    record.source_baggage(&Baggage::parse(&req.headers));
    if let Some(w) = state.workload_by_ip(peer.ip()) {
        record.source_workload(w);
    }
    record.source_principal(&req.peer_identity);
    let me = state.workload_by_name(&pod.namespace, &pod.name);
    label_destination(&mut record, &pod, me);
    let mut answer = HeaderMap::new();
    if let Some(v) = me.and_then(|w| w.telemetry.baggage_header.clone()) {
        answer.insert(amesh_hbone::metadata::BAGGAGE, v);
    }
    let tunnel = me.and_then(|w| w.proxy_protocol);
    record.labels.connection_security_policy = SecurityPolicy::MutualTls;
    let facts = Facts {
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        source: Some(req.peer_identity.clone()),
        source_ip: peer.ip(),
        destination_ip: target.ip(),
        destination_port: target.port(),
    };
    let app_port = tunnel.and_then(|t| t.port);
    let admitted = match admit(&inputs, state, &pod, facts, &mut record, app_port).await {
        // The app asked for the PROXY protocol: the original addresses and the caller's
        // identity first, as Istio's ztunnel writes them.
        Ok((mut app, live, kill)) if tunnel.is_some() => {
            match write_proxy_header(&mut app, peer, target, &req.peer_identity).await {
                Ok(()) => Ok((app, live, kill)),
                Err(e) => Err(InboundError::AppUnreachable(e)),
            }
        }
        other => other,
    };
    match admitted {
        Err(e) => {
            let status = e.status();
            record.fail(e.response_flag(), &e);
            req.refuse(status);
        }
        Ok((mut app, _live, kill)) => match req.accept_with(answer) {
            Ok(mut stream) => relay(record, &mut stream, &mut app, Some(kill)).await,
            Err(e) => {
                let e = InboundError::Answer(e);
                record.fail(e.response_flag(), &e);
            }
        },
    }
}

/// The checks every inbound connection passes, in order: configuration loaded, then
/// authorization (STRICT peer authentication arrives as a DENY policy for peers without an
/// identity, so plaintext is judged there too); then the connection to the app, registered
/// for re-checks when policies change.
/// `state` is the snapshot the caller labelled the connection from; it is let go before the
/// app is dialled, so a long connection never pins an old state.
async fn admit(
    inputs: &Arc<ProxyInputs>,
    state: Arc<State>,
    pod: &PodCtx,
    facts: Facts,
    record: &mut ConnRecord,
    app_port: Option<u16>,
) -> Result<(TcpStream, LiveGuard, Stop), InboundError> {
    if !inputs.state.is_loaded() {
        return Err(InboundError::NotConfigured);
    }
    let decision = authorize(&state, &facts, &inputs.metrics.policy);
    drop(state);
    match decision {
        Decision::Deny { by } => return Err(InboundError::Denied { by }),
        Decision::Allow { by } => record.policy = by,
    }
    let port = app_port.unwrap_or(facts.destination_port);
    let target = SocketAddr::new(facts.destination_ip, port);
    let (live, kill) = inputs.live.register(facts);
    let app = pod
        .net
        .connect(target)
        .await
        .map_err(InboundError::AppUnreachable)?;
    Ok((app, live, kill))
}

pub async fn handle_plaintext(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    conn: TcpStream,
    peer: SocketAddr,
) {
    let Some(original) = inputs.orig_dst.inbound_target(&conn) else {
        inputs
            .metrics
            .listeners
            .refuse(Listener::Plaintext, RefuseReason::NoOriginalDestination);
        return;
    };
    let (target, peer) = (canonical(original), canonical(peer));
    if is_ztunnel_port(target.port()) {
        // Anyone outside the mesh can do this: counted every time, logged now and then.
        inputs
            .metrics
            .listeners
            .refuse(Listener::Plaintext, RefuseReason::ZtunnelPort);
        if let Some(suppressed) = PLAINTEXT_LOOP_WARNING.allow() {
            warn!(pod = %pod.name, %peer, %target, suppressed, "refusing plaintext to one of ztunnel's own ports (it would loop)");
        }
        return;
    }
    let span = info_span!("inbound_plaintext", pod = %pod.name, src = %peer, dst = %target, dst.identity = %pod.identity);
    serve_plaintext(inputs, pod, conn, peer, target)
        .instrument(span)
        .await
}

async fn serve_plaintext(
    inputs: Arc<ProxyInputs>,
    pod: Arc<PodCtx>,
    mut conn: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
) {
    let mut record = ConnRecord::new(
        inputs.metrics.tcp.clone(),
        TcpLabels::new(Reporter::Destination),
        peer,
        target,
    );
    let state = inputs.state.snapshot();
    if let Some(w) = state.workload_by_ip(peer.ip()) {
        record.source_workload(w);
    }
    label_destination(
        &mut record,
        &pod,
        state.workload_by_name(&pod.namespace, &pod.name),
    );
    let facts = Facts {
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        source: None,
        source_ip: peer.ip(),
        destination_ip: target.ip(),
        destination_port: target.port(),
    };
    // Refused plaintext is closed unanswered.
    match admit(&inputs, state, &pod, facts, &mut record, None).await {
        Ok((mut app, _live, kill)) => relay(record, &mut conn, &mut app, Some(kill)).await,
        Err(e) => record.fail(e.response_flag(), &e),
    }
}

/// The destination side of the labels: the pod's workload, or (not in the state yet) its
/// identity and name.
fn label_destination(record: &mut ConnRecord, pod: &PodCtx, me: Option<&Arc<Workload>>) {
    match me {
        Some(w) => record.destination_workload(w),
        None => {
            record.destination_principal(&pod.identity);
            record.labels.destination_workload = pod.name.clone();
        }
    }
}

/// Istio's TLV type for the caller's identity in a PROXY v2 header.
const PROXY_AUTHORITY_TLV: u8 = 0xD0;

/// A PROXY protocol v2 header (the caller `src`, the original destination `dst`, the caller's
/// SPIFFE identity as TLV 0xD0), written before any byte of the tunnel.
async fn write_proxy_header(
    app: &mut TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    identity: &amesh_identity::Identity,
) -> std::io::Result<()> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    use tokio::io::AsyncWriteExt;
    // v4 and v6 cannot be mixed in one header: an IPv4 caller of an IPv6 target is mapped.
    let (src, dst) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V6(_)) => (
            SocketAddr::new(s.ip().to_ipv6_mapped().into(), s.port()),
            dst,
        ),
        (SocketAddr::V6(_), SocketAddr::V4(d)) => (
            src,
            SocketAddr::new(d.ip().to_ipv6_mapped().into(), d.port()),
        ),
        pair => pair,
    };
    let header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .write_tlv(PROXY_AUTHORITY_TLV, identity.to_string().as_bytes())?
            .build()?;
    app.write_all(&header).await
}
