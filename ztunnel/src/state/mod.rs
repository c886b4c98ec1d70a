//! What ztunnel knows about the mesh: the shared model and store of `amesh-state`, fed by the
//! xDS client ([`xds_client`]) or the local file ([`local`]).

mod local;
pub mod xds_client;

pub use amesh_state::*;
pub use local::{ConfigError, load_file, watch_file};
