//! One connection's record: its Istio metric labels and access-log fields. With Istio's
//! semantics every attempt is counted opened and closed, and a failed one failed too;
//! `finish` or `fail` closes it, and dropping it unfinished (the pod was removed, ztunnel
//! stopped) still counts it closed and logs why, so nothing leaks.

use crate::metrics::{ResponseFlag, TcpLabels, TcpMetrics, UNKNOWN, or_unknown};
use crate::state::Workload;
use amesh_hbone::metadata::Baggage;
use amesh_identity::Identity;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tracing::info;

#[derive(Debug)]
pub struct ConnRecord {
    metrics: Arc<TcpMetrics>,
    pub labels: TcpLabels,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The authorization policy that allowed it, if one decided.
    pub policy: Option<String>,
    started: Instant,
    established: bool,
    /// Counted in `istio_tcp_connections_opened_total` already.
    counted_open: bool,
    done: bool,
}

impl ConnRecord {
    pub fn new(
        metrics: Arc<TcpMetrics>,
        labels: TcpLabels,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Self {
            metrics,
            labels,
            src,
            dst,
            policy: None,
            started: Instant::now(),
            established: false,
            counted_open: false,
            done: false,
        }
    }

    /// The source workload as the state knows it (Istio's `with_source`): names, canonical
    /// service and revision, cluster and locality. Not its principal: that comes from the
    /// certificate ([`Self::source_principal`]).
    pub fn source_workload(&mut self, w: &Workload) {
        let l = &mut self.labels;
        let t = &w.telemetry;
        l.source_workload = or_unknown(&t.workload_name);
        l.source_canonical_service = or_unknown(&t.canonical_name);
        l.source_canonical_revision = or_unknown(&t.canonical_revision);
        l.source_workload_namespace = or_unknown(&w.namespace);
        l.source_app = or_unknown(&t.canonical_name);
        l.source_version = or_unknown(&t.canonical_revision);
        l.source_cluster = or_unknown(&t.cluster_id);
        let loc = l.locality.get();
        loc.source_region = or_unknown(&w.locality.region);
        loc.source_zone = or_unknown(&w.locality.zone);
    }

    /// What the caller said about itself in its CONNECT's `baggage` (Istio's derived
    /// source), for a caller the state does not know. [`Self::source_workload`] overrides it.
    pub fn source_baggage(&mut self, b: &Baggage) {
        let l = &mut self.labels;
        l.source_workload = or_unknown(&b.workload_name);
        l.source_canonical_service = or_unknown(&b.service_name);
        l.source_canonical_revision = or_unknown(&b.service_version);
        l.source_workload_namespace = or_unknown(&b.namespace);
        l.source_app = or_unknown(&b.workload_name);
        l.source_version = or_unknown(&b.service_version);
        l.source_cluster = or_unknown(&b.cluster);
        let loc = l.locality.get();
        loc.source_region = or_unknown(&b.region);
        loc.source_zone = or_unknown(&b.zone);
    }

    /// The source's identity: the peer certificate's inbound, the pod's own outbound.
    pub fn source_principal(&mut self, identity: &Identity) {
        self.labels.source_principal = identity.to_string();
        if self.labels.source_workload_namespace == UNKNOWN {
            self.labels.source_workload_namespace = identity.namespace.clone();
        }
    }

    /// The destination workload (Istio's `with_destination`), its principal included.
    pub fn destination_workload(&mut self, w: &Workload) {
        let l = &mut self.labels;
        let t = &w.telemetry;
        l.destination_workload = or_unknown(&t.workload_name);
        l.destination_canonical_service = or_unknown(&t.canonical_name);
        l.destination_canonical_revision = or_unknown(&t.canonical_revision);
        l.destination_workload_namespace = or_unknown(&w.namespace);
        l.destination_principal = w.identity().to_string();
        l.destination_app = or_unknown(&t.canonical_name);
        l.destination_version = or_unknown(&t.canonical_revision);
        l.destination_cluster = or_unknown(&t.cluster_id);
        let loc = l.locality.get();
        loc.destination_region = or_unknown(&w.locality.region);
        loc.destination_zone = or_unknown(&w.locality.zone);
    }

    /// A destination pod the state has no workload for (yet): its identity and namespace.
    pub fn destination_principal(&mut self, identity: &Identity) {
        self.labels.destination_principal = identity.to_string();
        self.labels.destination_workload_namespace = identity.namespace.clone();
    }

    /// The connection is up: counted opened.
    pub fn established(&mut self) {
        self.established = true;
        self.count_opened();
    }

    /// Istio counts every attempt opened (before its outcome sets a response flag), every
    /// attempt closed when it ends, and the failed ones in `..._failed_total` besides: opened
    /// equals closed once all are over, and failures are a part of them.
    fn count_opened(&mut self) {
        if !self.counted_open {
            self.counted_open = true;
            self.metrics.opened.get_or_create(&self.labels).inc();
        }
    }

    /// The connection ended after carrying `up` bytes from the client towards the server and
    /// `down` bytes back. Istio counts them "backwards" (istio#32399): client → server is
    /// `istio_tcp_received_bytes`, server → client `istio_tcp_sent_bytes`; kept for
    /// compatibility with existing dashboards.
    pub fn finish(mut self, up: u64, down: u64, outcome: &str) {
        self.metrics
            .received_bytes
            .get_or_create(&self.labels)
            .inc_by(up);
        self.metrics
            .sent_bytes
            .get_or_create(&self.labels)
            .inc_by(down);
        self.metrics.closed.get_or_create(&self.labels).inc();
        self.log(up, down, outcome);
        self.done = true;
    }

    /// The connection could not be set up: counted failed with Istio's response flag for
    /// why, and logged with the reason.
    pub fn fail(mut self, flag: ResponseFlag, reason: &dyn std::fmt::Display) {
        self.count_opened();
        self.labels.response_flags = flag;
        self.metrics.closed.get_or_create(&self.labels).inc();
        self.metrics.failed.get_or_create(&self.labels).inc();
        self.log(0, 0, &reason.to_string());
        self.done = true;
    }

    fn log(&self, up: u64, down: u64, outcome: &str) {
        let l = &self.labels;
        info!(
            target: "access",
            reporter = l.reporter.as_str(),
            src.addr = %self.src,
            dst.addr = %self.dst,
            src.identity = %l.source_principal,
            src.workload = %l.source_workload,
            dst.identity = %l.destination_principal,
            dst.workload = %l.destination_workload,
            dst.service = %l.destination_service,
            security = l.connection_security_policy.as_str(),
            authz.policy = self.policy.as_deref().unwrap_or("-"),
            bytes.up = up,
            bytes.down = down,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome,
            "connection complete"
        );
    }
}

impl Drop for ConnRecord {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.established {
            self.metrics.closed.get_or_create(&self.labels).inc();
            self.log(0, 0, "closed: pod removed or ztunnel stopping");
        } else {
            self.count_opened();
            self.labels.response_flags = ResponseFlag::Connect;
            self.metrics.closed.get_or_create(&self.labels).inc();
            self.metrics.failed.get_or_create(&self.labels).inc();
            self.log(0, 0, "abandoned before it was established");
        }
    }
}
