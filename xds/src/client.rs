//! The delta ADS client: one stream to the control plane over TLS, the subscriptions of
//! [`Subscriptions`] on it. Every response is applied through its type's handler and
//! answered (ACK, or a NACK naming the rejected resources while the good ones apply). When
//! the control plane is away the proxy keeps what it applied last; the client reconnects
//! with jittered exponential backoff and reports the versions it holds, so the control plane
//! sends only what changed meanwhile.

use crate::{
    backoff::Backoff,
    control::{Connector, Credentials},
    handler::Handler,
    subscriptions::{Applied, Subscriptions},
};
use amesh_proto::discovery::{
    self as d, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::{ClientConfig, pki_types::ServerName};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

mod session;

/// The largest response the client decodes by default (Istio's 200 MiB, shared with the
/// control plane).
pub use amesh_proto::MAX_MESSAGE_SIZE;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port`.
    pub address: String,
    /// Sent and checked when the control plane is verified by host name.
    pub server_name: Option<ServerName<'static>>,
    /// Sent as the node id (ztunnel: `ztunnel~<ip>~<name>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    /// Node metadata (ztunnel: `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, `CLUSTER_ID`).
    pub metadata: BTreeMap<String, String>,
    pub credentials: Credentials,
}

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("connecting to the control plane: {}", with_causes(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("xDS stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the xDS stream's request side closed")]
    RequestsClosed,
}

/// An error with what caused it, down the chain: tonic's transport error alone says only
/// "transport error", its causes say which (a refused connection, a certificate not valid
/// for the name asked for...).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// How a stream ended, as Istio's ztunnel labels `istio_xds_connection_terminations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Could not connect.
    ConnectionError,
    /// The stream failed.
    Error,
    /// The control plane closed it.
    Complete,
}

impl Termination {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ConnectionError => "ConnectionError",
            Self::Error => "Error",
            Self::Complete => "Complete",
        }
    }
}

impl XdsError {
    fn termination(&self) -> Termination {
        match self {
            XdsError::Connect(_) => Termination::ConnectionError,
            XdsError::Stream(_) | XdsError::RequestsClosed => Termination::Error,
        }
    }
}

/// Hooks for metrics and tests; every method defaults to nothing.
pub trait Observer: Send + Sync {
    /// A response arrived (before it is applied), `encoded_len` bytes long.
    fn response(&self, _type_url: &str, _encoded_len: u64) {}
    /// A response was applied and answered.
    fn applied(&self, _applied: &Applied) {}
    /// A stream ended (or could not start).
    fn terminated(&self, _reason: Termination) {}
}

#[derive(Debug)]
struct NoObserver;
impl Observer for NoObserver {}

/// Names to add to a type's subscription.
#[derive(Debug)]
struct Subscribe {
    type_url: String,
    names: Vec<String>,
}

/// Asks a running client for more resources, and tells when it is ready.
#[derive(Debug, Clone)]
pub struct Handle {
    subscribe: mpsc::UnboundedSender<Subscribe>,
    ready: watch::Receiver<bool>,
}

/// The client has stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the xDS client has stopped")]
pub struct Stopped;

impl Handle {
    /// Adds `names` to the subscription of `type_url` (on demand): asked for at once on an
    /// open stream, else on the next one.
    pub fn subscribe(
        &self,
        type_url: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Result<(), Stopped> {
        let request = Subscribe {
            type_url: type_url.to_string(),
            names: names.into_iter().collect(),
        };
        self.subscribe.send(request).map_err(|_| Stopped)
    }

    /// Becomes true once every subscribed type has had its first response, and stays so
    /// (the proxy keeps serving what it has while the control plane is away).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

/// Called after every response once every type has had its first one: where a proxy
/// publishes the state its handlers built.
type OnSynced = Box<dyn FnMut() + Send>;

/// The client, built with its handlers and then [run](Client::run).
pub struct Client {
    config: Config,
    subscriptions: Subscriptions,
    observer: Arc<dyn Observer>,
    on_synced: OnSynced,
    max_message_size: usize,
    ready: watch::Sender<bool>,
    subscribe_tx: mpsc::UnboundedSender<Subscribe>,
    subscribe_rx: mpsc::UnboundedReceiver<Subscribe>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.config.address)
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

impl Client {
    pub fn new(config: Config) -> Self {
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        Self {
            config,
            subscriptions: Subscriptions::default(),
            observer: Arc::new(NoObserver),
            on_synced: Box::new(|| {}),
            max_message_size: MAX_MESSAGE_SIZE,
            ready: watch::channel(false).0,
            subscribe_tx,
            subscribe_rx,
        }
    }

    /// Subscribes to every resource of `type_url`, handled by `handler`.
    pub fn wildcard(mut self, type_url: &str, handler: impl Handler) -> Self {
        self.subscriptions.wildcard(type_url, handler);
        self
    }

    /// Subscribes to the named resources of `type_url`; [`Handle::subscribe`] adds more.
    pub fn named(
        mut self,
        type_url: &str,
        names: impl IntoIterator<Item = String>,
        handler: impl Handler,
    ) -> Self {
        self.subscriptions.named(type_url, names, handler);
        self
    }

    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Runs `publish` after every response once every type has had its first response.
    pub fn on_synced(mut self, publish: impl FnMut() + Send + 'static) -> Self {
        self.on_synced = Box::new(publish);
        self
    }

    /// Overrides the largest response decoded ([`MAX_MESSAGE_SIZE`]); tests use it to show
    /// what a smaller limit breaks.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    pub fn handle(&self) -> Handle {
        Handle {
            subscribe: self.subscribe_tx.clone(),
            ready: self.ready.subscribe(),
        }
    }

    /// Runs forever: connect, sync, and on any failure back off and reconnect. `tls` is
    /// called for every connection so that the client certificate is fresh.
    pub async fn run(mut self, tls: impl Fn() -> Result<Arc<ClientConfig>, String> + Send) {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(15));
        loop {
            let synced_before = self.subscriptions.synced_count();
            let outcome = match tls() {
                Ok(tls) => self.session(tls).await,
                Err(e) => {
                    warn!(error = %e, "no client certificate for the control plane");
                    Ok(false)
                }
            };
            let address = &self.config.address;
            let (progressed, termination) = match outcome {
                Ok(progressed) => {
                    info!(%address, "control plane closed the xDS stream");
                    (progressed, Termination::Complete)
                }
                Err(e) => {
                    warn!(%address, error = %e, "xDS stream failed; serving the last good state");
                    (false, e.termination())
                }
            };
            self.observer.terminated(termination);
            if progressed || self.subscriptions.synced_count() > synced_before {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Opens the channel and the stream (a free function: a borrowed [`Client`] held across the
/// awaits would make the client's future need `Sync` handlers).
async fn connect(
    config: &Config,
    max_message_size: usize,
    tls: Arc<ClientConfig>,
    requests: mpsc::Receiver<d::DeltaDiscoveryRequest>,
) -> Result<tonic::Streaming<d::DeltaDiscoveryResponse>, XdsError> {
    let connector = Connector {
        address: config.address.clone(),
        server_name: config.server_name.clone(),
        tls,
    };
    let channel = Endpoint::from_static("http://amesh-xds")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(max_message_size);
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    config.credentials.apply(&mut request).await;
    Ok(client
        .delta_aggregated_resources(request)
        .await?
        .into_inner())
}
