//! The CNI side: the specification's types (network configuration, error objects) and the
//! plugin's logic, kept apart from the binary so that tests drive it with any input.

pub mod conf;
pub mod error;
pub mod kube;
pub mod plugin;

pub use conf::{PluginConf, SUPPORTED_VERSIONS};
pub use error::CniError;
