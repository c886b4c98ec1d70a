//! The contract between the ADS client and a proxy: one [`Handler`] per type URL decodes and
//! validates that type's resources and applies the accepted ones. The client owns everything
//! else (the stream, the versions held, ACK/NACK, readiness).

use std::fmt;

/// A resource a handler refused, named as the control plane named it: what a NACK carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// The accepted part of one response for one type: what to insert or replace, and what to
/// remove. Rejected resources are not in it, so their last good version stays.
#[derive(Debug)]
pub struct Changes<R> {
    pub updated: Vec<(String, R)>,
    pub removed: Vec<String>,
}

/// What a proxy does with the resources of one type URL.
pub trait Handler: Send + 'static {
    /// A decoded, validated resource.
    type Resource: Send;
    /// Why a resource was refused; its text is the reason the NACK gives.
    type Error: fmt::Display;

    /// Decodes and validates one resource (the bytes of its `Any`; empty when the control
    /// plane sent none). Every resource of a response is decoded before [`Handler::apply`]
    /// runs, so a handler that publishes under a lock holds it only to apply, never while a
    /// large response is parsed.
    fn decode(&self, name: &str, bytes: &[u8]) -> Result<Self::Resource, Self::Error>;

    /// Applies the accepted resources and the removals of one response.
    fn apply(&mut self, changes: Changes<Self::Resource>);
}

/// Decodes every resource, applies the good ones with the removals through `handler`, and
/// returns the bad: what the client does with each response (public so that a proxy's tests
/// can drive its handlers the same way).
pub fn process<H: Handler + ?Sized>(
    handler: &mut H,
    resources: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
) -> Vec<Rejected> {
    let mut updated = Vec::with_capacity(resources.len());
    let mut rejected = Vec::new();
    for (name, bytes) in resources {
        match handler.decode(&name, &bytes) {
            Ok(resource) => updated.push((name, resource)),
            Err(e) => rejected.push(Rejected {
                name,
                reason: e.to_string(),
            }),
        }
    }
    handler.apply(Changes { updated, removed });
    rejected
}

/// A handler with its resource type erased, so one client holds handlers of several types.
pub(crate) trait ErasedHandler: Send {
    fn process(&mut self, resources: Vec<(String, Vec<u8>)>, removed: Vec<String>)
    -> Vec<Rejected>;
}

impl<H: Handler> ErasedHandler for H {
    fn process(
        &mut self,
        resources: Vec<(String, Vec<u8>)>,
        removed: Vec<String>,
    ) -> Vec<Rejected> {
        process(self, resources, removed)
    }
}
