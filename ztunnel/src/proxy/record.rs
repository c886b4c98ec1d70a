//! One connection's record: its Istio metric labels and access-log fields. With Istio's
//! semantics every attempt is counted opened and closed, and a failed one failed too;
//! `finish` or `fail` closes it, and dropping it unfinished (the pod was removed, ztunnel
//! stopped) still counts it closed and logs why, so nothing leaks.

use crate::metrics::{ResponseFlag, TcpLabels, TcpMetrics};
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

    /// Fills the source side of the labels from a workload identity.
    pub fn source(&mut self, identity: &Identity, workload: &str) {
        self.labels.source_principal = identity.to_string();
        self.labels.source_workload = workload.to_string();
        self.labels.source_canonical_service = workload.to_string();
        self.labels.source_workload_namespace = identity.namespace.clone();
    }

    /// Fills the destination side of the labels from a workload identity.
    pub fn destination(&mut self, identity: &Identity, workload: &str) {
        self.labels.destination_principal = identity.to_string();
        self.labels.destination_workload = workload.to_string();
        self.labels.destination_canonical_service = workload.to_string();
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
