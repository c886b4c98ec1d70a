//! What amesh's servers share, so each listener does not grow its own copy:
//!
//! - [`Acceptor`]: an accept loop that backs off after errors instead of spinning, logs them
//!   rate-limited and reports each one to an observer (ztunnel counts them in a metric);
//! - [`http1`]: hyper's HTTP/1.1 server with the bounds of an endpoint anyone who reaches the
//!   port may talk to (head, body, header-read time, connection time), one request per
//!   connection: [`serve_http1`] and the body helper [`read_body`].
#![forbid(unsafe_code)]

pub mod accept;
pub mod http1;

pub use accept::Acceptor;
pub use http1::{
    BodyError, CONNECTION_DEADLINE, HEADER_READ_TIMEOUT, MAX_BODY, MAX_HEAD, read_body, serve_http1,
};
