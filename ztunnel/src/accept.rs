//! ztunnel's listeners accept through [`amesh_serve::Acceptor`] (backoff on accept errors,
//! throttled warnings); this adds the count every error makes in
//! `amesh_accept_errors_total{listener}`.

use crate::metrics::{Listener, ListenerLabels, ListenerMetrics};
use amesh_serve::Acceptor;

/// The acceptor of one of ztunnel's listeners, counting its errors.
pub fn counted(listener: Listener, metrics: &ListenerMetrics) -> Acceptor {
    let errors = metrics
        .accept_errors
        .get_or_create(&ListenerLabels { listener })
        .clone();
    Acceptor::new(listener.as_str()).on_error(move |_| {
        errors.inc();
    })
}
