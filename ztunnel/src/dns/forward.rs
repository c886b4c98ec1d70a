//! Queries ztunnel does not answer itself go to the upstream resolvers, from the asking
//! pod's network namespace with ztunnel's mark (never captured), as Istio's ztunnel sends
//! them: the pod's own network path to its resolvers. Over UDP for a UDP client, whose
//! resolver retries over TCP when the answer comes back truncated, and over TCP for a TCP
//! client. Answers are cached within their TTLs (negative ones within their SOA's).

use super::resolv_conf::Upstreams;
use crate::proxy::PodNet;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{RData, Record},
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

/// The most answers kept.
const CACHE_ENTRIES: usize = 8192;
/// The longest an answer is kept, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 3600;
/// The largest answer read from an upstream.
const MAX_ANSWER: usize = 65535;

/// How the client asked (and so how the upstream is asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("no upstream resolver answered: {0}")]
    NoAnswer(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    query_type: u16,
    query_class: u16,
}

#[derive(Debug)]
struct Cached {
    answer: Message,
    stored: Instant,
    ttl: u32,
}

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Upstreams,
    cache: Mutex<HashMap<Key, Cached>>,
}

/// What a forwarded query came back with.
#[derive(Debug)]
pub struct Forwarded {
    pub answer: Message,
    /// It came from the cache: no upstream was asked.
    pub cached: bool,
}

impl Forwarder {
    pub fn new(upstreams: Upstreams) -> Self {
        Self {
            upstreams,
            cache: Mutex::default(),
        }
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The upstream's answer to `query` (its one question), with the client's id.
    pub async fn forward(
        &self,
        query: &Message,
        transport: Transport,
        net: &PodNet,
    ) -> Result<Forwarded, ForwardError> {
        let Some(question) = query.queries.first() else {
            return Err(ForwardError::NoAnswer("no question".into()));
        };
        let key = Key {
            name: question.name().to_lowercase().to_ascii(),
            query_type: question.query_type().into(),
            query_class: question.query_class().into(),
        };
        if let Some(answer) = self.cached(&key) {
            return Ok(Forwarded {
                answer: with_id(answer, query),
                cached: true,
            });
        }
        if self.upstreams.servers.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut outgoing = Message::query();
        outgoing.metadata.id = fastrand::u16(..);
        outgoing.metadata.op_code = OpCode::Query;
        outgoing.metadata.recursion_desired = query.metadata.recursion_desired;
        outgoing.metadata.checking_disabled = query.metadata.checking_disabled;
        outgoing.add_query(question.clone());
        if let Some(edns) = &query.edns {
            outgoing.set_edns(edns.clone());
        }
        let bytes = outgoing
            .to_vec()
            .map_err(|e| ForwardError::NoAnswer(format!("encoding the query: {e}")))?;
        let mut last = String::new();
        for _ in 0..self.upstreams.attempts {
            for server in &self.upstreams.servers {
                let asked = match transport {
                    Transport::Udp => udp(net, *server, &bytes, self.upstreams.timeout).await,
                    Transport::Tcp => tcp(net, *server, &bytes, self.upstreams.timeout).await,
                };
                let answer = match asked.and_then(|raw| parse_answer(&raw, &outgoing)) {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(%server, error = %e, "upstream resolver failed");
                        last = format!("{server}: {e}");
                        continue;
                    }
                };
                if !answer.metadata.truncation {
                    self.store(key, &answer);
                }
                return Ok(Forwarded {
                    answer: with_id(answer, query),
                    cached: false,
                });
            }
        }
        Err(ForwardError::NoAnswer(last))
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut answer = entry.answer.clone();
        // The TTLs the client sees count down from when the answer was stored.
        for r in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(answer)
    }

    fn store(&self, key: Key, answer: &Message) {
        let Some(ttl) = cache_ttl(answer) else {
            return;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                return;
            }
        }
        cache.insert(
            key,
            Cached {
                answer: answer.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// How long an answer may be cached: its records' smallest TTL; a negative answer, its SOA's
/// (the smaller of its TTL and minimum); nothing for failures or answers without either.
fn cache_ttl(answer: &Message) -> Option<u32> {
    let ttl = match answer.metadata.response_code {
        ResponseCode::NoError if !answer.answers.is_empty() => {
            answer.answers.iter().map(|r| r.ttl).min()
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            answer.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        }
        _ => None,
    }?;
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

/// The upstream's answer as the client's: its id and its question.
fn with_id(mut answer: Message, query: &Message) -> Message {
    answer.metadata.id = query.metadata.id;
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.authoritative = false;
    answer.metadata.recursion_available = true;
    answer.queries = query.queries.clone();
    answer
}

fn parse_answer(raw: &[u8], asked: &Message) -> Result<Message, String> {
    let answer = Message::from_vec(raw).map_err(|e| format!("malformed answer: {e}"))?;
    if answer.metadata.id != asked.metadata.id
        || answer.metadata.message_type != MessageType::Response
    {
        return Err("an answer to another query".into());
    }
    let same = |a: &Query, b: &Query| {
        a.query_type() == b.query_type()
            && a.query_class() == b.query_class()
            && a.name().to_lowercase() == b.name().to_lowercase()
    };
    if answer.queries.len() != 1 || !same(&answer.queries[0], &asked.queries[0]) {
        return Err("an answer to another question".into());
    }
    if answer.metadata.response_code == ResponseCode::ServFail {
        return Err("SERVFAIL".into());
    }
    Ok(answer)
}

async fn udp(
    net: &PodNet,
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let sock = net.udp_to(server).map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_ANSWER];
    // A connected socket receives from the server only; a stray or spoofed datagram with
    // another id is skipped by the caller's check, so one read is enough.
    let n = tokio::time::timeout(timeout, sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp(
    net: &PodNet,
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = net.connect(server).await.map_err(|e| e.to_string())?;
        let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
        let n = stream.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(n)];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok(buf)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// An answer record, for the cache tests and the server's own answers.
pub fn record(name: hickory_proto::rr::Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name, ttl, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType, rdata::A};

    fn answer(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = rcode;
        m.answers = answers;
        m.authorities = authorities;
        m
    }

    #[test]
    fn answers_are_cached_within_their_ttls() {
        let name = Name::from_ascii("a.example.").unwrap();
        let a = |ttl| record(name.clone(), ttl, RData::A(A::new(192, 0, 2, 1)));
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NoError, vec![a(300), a(60)], vec![])),
            Some(60)
        );
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NoError, vec![a(0)], vec![])),
            None
        );
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NoError, vec![a(86400)], vec![])),
            Some(MAX_CACHE_TTL)
        );
        let soa =
            hickory_proto::rr::rdata::SOA::new(name.clone(), name.clone(), 1, 3600, 600, 86400, 45);
        let negative = answer(
            ResponseCode::NXDomain,
            vec![],
            vec![record(name.clone(), 120, RData::SOA(soa))],
        );
        assert_eq!(cache_ttl(&negative), Some(45));
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NXDomain, vec![], vec![])),
            None
        );
        assert_eq!(
            cache_ttl(&answer(ResponseCode::Refused, vec![a(60)], vec![])),
            None
        );

        let f = Forwarder::new(Upstreams::default());
        let key = Key {
            name: "a.example.".into(),
            query_type: RecordType::A.into(),
            query_class: 1,
        };
        f.store(
            key.clone(),
            &answer(ResponseCode::NoError, vec![a(60)], vec![]),
        );
        let got = f.cached(&key).expect("cached");
        assert_eq!(got.answers[0].ttl, 60);
        // Nothing upstream and nothing cached: a clear error, not a hang.
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("b.example.").unwrap(),
            RecordType::A,
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let home = std::sync::Arc::new(
            amesh_sys::netns::Netns::open("/proc/self/ns/net").expect("own netns"),
        );
        let net = PodNet::new(
            amesh_sys::netns::Netns::open("/proc/self/ns/net").expect("own netns"),
            home,
        );
        assert!(matches!(
            rt.block_on(f.forward(&q, Transport::Udp, &net)),
            Err(ForwardError::NoUpstream)
        ));
    }
}
