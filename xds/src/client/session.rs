//! One stream: the first requests, then responses answered and on-demand names asked for as
//! they come.

use super::{Client, Subscribe, XdsError, connect};
use amesh_proto::discovery as d;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_rustls::rustls::ClientConfig;
use tracing::{info, warn};

enum Event {
    Response(Option<d::DeltaDiscoveryResponse>),
    Subscribe(Subscribe),
}

impl Client {
    /// One stream. Returns whether any response arrived (which resets the backoff).
    pub(super) async fn session(&mut self, tls: Arc<ClientConfig>) -> Result<bool, XdsError> {
        // Names asked for while disconnected go into the first requests.
        while let Ok(s) = self.subscribe_rx.try_recv() {
            self.add_names(s);
        }
        let initial = self.subscriptions.initial_requests(&self.node());
        // Room for every first request, sent before the stream opens, and the replies after.
        let (tx, rx) = mpsc::channel(16.max(initial.len() + 1));
        for request in initial {
            send(&tx, request).await?;
        }
        let mut inbound = connect(&self.config, self.max_message_size, tls, rx).await?;
        info!(address = %self.config.address, node = %self.config.node_id, "xDS stream open");
        let mut progressed = false;
        loop {
            let event = tokio::select! {
                message = inbound.message() => Event::Response(message?),
                Some(s) = self.subscribe_rx.recv() => Event::Subscribe(s),
            };
            match event {
                Event::Response(None) => return Ok(progressed),
                Event::Response(Some(response)) => {
                    progressed = true;
                    self.on_response(response, &tx).await?;
                }
                Event::Subscribe(s) => {
                    if let Some(request) = self.add_names(s) {
                        send(&tx, request).await?;
                    }
                }
            }
        }
    }

    /// Applies a response, answers it, and publishes once every type is synced.
    async fn on_response(
        &mut self,
        response: d::DeltaDiscoveryResponse,
        tx: &mpsc::Sender<d::DeltaDiscoveryRequest>,
    ) -> Result<(), XdsError> {
        let size = u64::try_from(prost::Message::encoded_len(&response)).unwrap_or(u64::MAX);
        self.observer.response(&response.type_url, size);
        let (reply, applied) = self.subscriptions.respond(response);
        send(tx, reply).await?;
        if let Some(applied) = &applied {
            self.observer.applied(applied);
        }
        if self.subscriptions.all_synced() {
            if !*self.ready.borrow() {
                info!(address = %self.config.address, "xDS synced: every type has had its first response");
            }
            self.ready.send_replace(true);
            (self.on_synced)();
        }
        Ok(())
    }

    fn add_names(&mut self, s: Subscribe) -> Option<d::DeltaDiscoveryRequest> {
        match self.subscriptions.add_names(&s.type_url, s.names) {
            Ok(request) => request,
            Err(error) => {
                warn!(%error, "on-demand subscription ignored");
                None
            }
        }
    }

    /// The node as Istio's ztunnel describes itself.
    fn node(&self) -> d::Node {
        use prost_types::{Struct, Value, value::Kind};
        let fields = self
            .config
            .metadata
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.clone())),
                };
                (k.clone(), value)
            })
            .collect();
        d::Node {
            id: self.config.node_id.clone(),
            cluster: self.config.credentials.cluster_id.clone(),
            metadata: Some(Struct { fields }),
        }
    }
}

async fn send(
    tx: &mpsc::Sender<d::DeltaDiscoveryRequest>,
    request: d::DeltaDiscoveryRequest,
) -> Result<(), XdsError> {
    tx.send(request).await.map_err(|_| XdsError::RequestsClosed)
}
