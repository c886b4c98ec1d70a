//! The in-pod DNS proxy: UDP and TCP on `127.0.0.1:15053` (and `[::1]:15053` where the pod
//! has IPv6) inside each pod's namespace, where the capture programs send its port-53
//! queries. A/AAAA for the mesh's names are answered here (authoritative, TTL 30 s, as
//! Istio's ztunnel); everything else goes to the upstream resolvers.
//!
//! Hostile input stays contained: an unparsable datagram is dropped (or answered FORMERR
//! when it has a header), a pod has a bounded number of queries in flight and of TCP
//! connections (the rest are dropped or closed), and a TCP client that stalls is closed.

use super::{
    forward::Transport,
    names::{self, Client},
};
use crate::{
    metrics::DnsLabels,
    proxy::{PodCtx, PodNet, ProxyInputs},
    signal::Stop,
};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// The port of the proxy in every pod.
pub const PORT: u16 = amesh_ebpf_common::DNS_CAPTURE_PORT;
/// Istio ztunnel's TTL for the answers it gives itself.
const TTL: u32 = 30;
/// Queries of one pod in flight at once (UDP and TCP together).
const IN_FLIGHT_PER_POD: usize = 128;
/// TCP connections one pod may hold open to the proxy.
const TCP_PER_POD: usize = 16;
/// A TCP client must send its next query within this (Istio's server timeout).
const TCP_IDLE: Duration = Duration::from_secs(5);
/// The smallest UDP answer size a client can be assumed to take.
const MIN_UDP_PAYLOAD: u16 = 512;

/// A pod's DNS sockets, opened inside its namespace.
#[derive(Debug)]
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// IPv4 must open; IPv6 only where the pod has `::1`.
    pub fn open(net: &PodNet) -> io::Result<Self> {
        let v4: SocketAddr = ([127, 0, 0, 1], PORT).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, PORT).into();
        let mut udp = vec![net.listen_udp(v4)?];
        let mut tcp = vec![net.listen(v4)?];
        if let (Ok(u), Ok(t)) = (net.listen_udp(v6), net.listen(v6)) {
            udp.push(u);
            tcp.push(t);
        }
        Ok(Self { udp, tcp })
    }

    /// Serves until the pod stops.
    pub fn serve(self, pod: &Arc<PodCtx>, inputs: &Arc<ProxyInputs>, stop: &Stop) {
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_POD));
        let connections = Arc::new(Semaphore::new(TCP_PER_POD));
        for socket in self.udp {
            let (pod, inputs, stop, in_flight) =
                (pod.clone(), inputs.clone(), stop.clone(), in_flight.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = serve_udp(Arc::new(socket), pod, inputs, in_flight) => {}
                    () = stop.clone().wait() => {}
                }
            });
        }
        for listener in self.tcp {
            let (pod, inputs, stop, in_flight, connections) = (
                pod.clone(),
                inputs.clone(),
                stop.clone(),
                in_flight.clone(),
                connections.clone(),
            );
            tokio::spawn(async move {
                let serve = serve_tcp(listener, pod, inputs, in_flight, connections, stop.clone());
                tokio::select! {
                    () = serve => {}
                    () = stop.clone().wait() => {}
                }
            });
        }
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    pod: Arc<PodCtx>,
    inputs: Arc<ProxyInputs>,
    in_flight: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; 4096];
    let mut errors = Backoff::default();
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                errors.wait(&e).await;
                continue;
            }
        };
        errors.reset();
        // A flood from the pod: beyond its share in flight, queries are dropped (a resolver
        // retries), never queued without bound.
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            debug!(pod = %pod.name, "DNS queries in flight at the limit; dropping one");
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, pod, inputs) = (socket.clone(), pod.clone(), inputs.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = answer(&inputs, &pod, &query, Transport::Udp).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    pod: Arc<PodCtx>,
    inputs: Arc<ProxyInputs>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    stop: Stop,
) {
    let mut errors = Backoff::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                errors.wait(&e).await;
                continue;
            }
        };
        errors.reset();
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(pod = %pod.name, "DNS TCP connections at the limit; closing one");
            continue;
        };
        let (pod, inputs, in_flight, stop) =
            (pod.clone(), inputs.clone(), in_flight.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = serve_tcp_client(stream, &pod, &inputs, &in_flight) => {}
                () = stop.clone().wait() => {}
            }
        });
    }
}

/// One TCP client: length-prefixed queries, one after the other, until it closes or idles.
async fn serve_tcp_client(
    mut stream: TcpStream,
    pod: &PodCtx,
    inputs: &ProxyInputs,
    in_flight: &Semaphore,
) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Ok(_permit) = in_flight.try_acquire() else {
            return;
        };
        let Some(answer) = answer(inputs, pod, &query, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Backs off an accept or receive loop that keeps failing (5 ms doubling to 1 s).
#[derive(Debug, Default)]
struct Backoff(Duration);

impl Backoff {
    async fn wait(&mut self, e: &io::Error) {
        self.0 = (self.0 * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        if self.0 == Duration::from_secs(1) {
            warn!(error = %e, "DNS proxy socket keeps failing");
        }
        tokio::time::sleep(self.0).await;
    }

    fn reset(&mut self) {
        self.0 = Duration::ZERO;
    }
}

/// The answer to one query from `pod`, encoded; `None`: nothing is sent back (the query
/// could not even be read).
pub async fn answer(
    inputs: &ProxyInputs,
    pod: &PodCtx,
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let dns = &inputs.dns;
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(e) => {
            debug!(pod = %pod.name, error = %e, "malformed DNS query");
            return formerr(query);
        }
    };
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = request.queries.clone();
    if let Some(edns) = &request.edns {
        let mut e = Edns::new();
        e.set_max_payload(edns.max_payload().max(MIN_UDP_PAYLOAD));
        reply.set_edns(e);
    }
    if request.metadata.message_type != MessageType::Query || request.queries.len() != 1 {
        reply.metadata.response_code = ResponseCode::FormErr;
        return encode(reply, &request, transport);
    }
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return encode(reply, &request, transport);
    }
    let question = &request.queries[0];
    let labels = labels(inputs, pod, question.query_type(), transport);
    dns.metrics.requests.get_or_create(&labels).inc();
    let name = names::normalize(&question.name().to_ascii());
    let client = Client {
        namespace: &pod.namespace,
        domain: &dns.domain,
    };
    let local = matches!(question.query_type(), RecordType::A | RecordType::AAAA)
        .then(|| names::lookup(&inputs.state.snapshot(), client, &name))
        .flatten();
    if let Some(found) = local {
        reply.metadata.authoritative = true;
        local_records(&mut reply, question.name(), question.query_type(), &found);
        return encode(reply, &request, transport);
    }
    // The upstream's.
    let started = Instant::now();
    let forwarded = dns.forwarder.forward(&request, transport, &pod.net).await;
    match forwarded {
        Ok(f) => {
            if !f.cached {
                dns.metrics.upstream_requests.get_or_create(&labels).inc();
                dns.metrics
                    .upstream_duration
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
            }
            let mut answer = f.answer;
            if request.edns.is_none() {
                answer.edns = None;
            }
            encode(answer, &request, transport)
        }
        Err(e) => {
            dns.metrics.upstream_requests.get_or_create(&labels).inc();
            dns.metrics.upstream_failures.get_or_create(&labels).inc();
            warn!(pod = %pod.name, namespace = %pod.namespace, name = %name, error = %e, "DNS query failed upstream");
            reply.metadata.response_code = ResponseCode::ServFail;
            encode(reply, &request, transport)
        }
    }
}

/// The records of a mesh name: a CNAME to the service host when a search domain was
/// removed, then the addresses of the asked family (none: an empty NOERROR, as Istio).
fn local_records(reply: &mut Message, asked: &Name, qtype: RecordType, found: &names::Answer) {
    let mut owner = asked.clone();
    if found.cname
        && let Ok(host) = Name::from_ascii(format!("{}.", found.host))
    {
        reply.add_answer(Record::from_rdata(
            asked.clone(),
            TTL,
            RData::CNAME(rdata::CNAME(host.clone())),
        ));
        owner = host;
    }
    let mut addresses = found.addresses.clone();
    fastrand::shuffle(&mut addresses);
    for ip in addresses {
        let data = match (qtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(rdata::A(v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(rdata::AAAA(v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(owner.clone(), TTL, data));
    }
}

fn labels(
    inputs: &ProxyInputs,
    pod: &PodCtx,
    qtype: RecordType,
    transport: Transport,
) -> DnsLabels {
    let state = inputs.state.snapshot();
    let telemetry = state.workload(&pod.uid).map(|w| w.telemetry.clone());
    let or_unknown = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("unknown").to_string();
    DnsLabels {
        request_query_type: qtype.to_string().to_ascii_lowercase(),
        request_protocol: transport.label(),
        source_canonical_service: or_unknown(telemetry.as_ref().map(|t| t.canonical_name.as_str())),
        source_canonical_revision: or_unknown(
            telemetry.as_ref().map(|t| t.canonical_revision.as_str()),
        ),
    }
}

/// Encodes `reply`; a UDP answer larger than the client takes is sent truncated (TC), for
/// the client to ask again over TCP.
fn encode(reply: Message, request: &Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    let limit = usize::from(
        request
            .edns
            .as_ref()
            .map_or(MIN_UDP_PAYLOAD, |e| e.max_payload().max(MIN_UDP_PAYLOAD)),
    );
    if transport == Transport::Udp && bytes.len() > limit {
        return reply.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// FORMERR for a query that has a header but cannot be parsed; nothing for less.
fn formerr(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The header's QR bit: never answer an answer.
    if query[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_queries_get_formerr_or_nothing() {
        assert_eq!(formerr(b"short"), None);
        let answer = formerr(&[0xab, 0xcd, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1]).unwrap();
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // An answer sent to the proxy is not answered (no reflection loops).
        assert_eq!(formerr(&[0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn mesh_names_get_a_cname_only_when_a_search_domain_was_removed() {
        let asked = Name::from_ascii("web.shop.svc.cluster.local.shop.svc.cluster.local.").unwrap();
        let found = names::Answer {
            host: "web.shop.svc.cluster.local".into(),
            cname: true,
            addresses: vec!["10.96.0.30".parse().unwrap(), "fd00::30".parse().unwrap()],
        };
        let mut reply = Message::response(1, OpCode::Query);
        local_records(&mut reply, &asked, RecordType::A, &found);
        assert_eq!(reply.answers.len(), 2);
        assert!(matches!(reply.answers[0].data, RData::CNAME(_)));
        assert_eq!(
            reply.answers[1].name.to_ascii(),
            "web.shop.svc.cluster.local."
        );
        assert!(matches!(reply.answers[1].data, RData::A(_)));
        let mut v6 = Message::response(1, OpCode::Query);
        local_records(
            &mut v6,
            &asked,
            RecordType::AAAA,
            &names::Answer {
                cname: false,
                ..found.clone()
            },
        );
        assert_eq!(v6.answers.len(), 1);
        assert_eq!(v6.answers[0].name, asked);
        // No address of the family: no records (an empty NOERROR).
        let mut none = Message::response(1, OpCode::Query);
        local_records(
            &mut none,
            &asked,
            RecordType::AAAA,
            &names::Answer {
                cname: false,
                addresses: vec!["10.96.0.30".parse().unwrap()],
                ..found
            },
        );
        assert!(none.answers.is_empty());
    }
}
