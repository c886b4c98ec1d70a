//! CNI error objects (spec 1.0, "Error"): well-known codes, a message and details.

use serde::Serialize;

/// An error the plugin prints on stdout (as the runtime expects) before exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}: {details}")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The codes the specification reserves (0-99) and amesh's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The node agent could not be reached for a pod that must be in the mesh.
    pub const AGENT_UNREACHABLE: u32 = 100;
    /// The node agent refused or failed to enroll a pod that must be in the mesh.
    pub const ENROLLMENT_FAILED: u32 = 101;
    /// CHECK found a pod that must be in the mesh not enrolled.
    pub const NOT_ENROLLED: u32 = 102;
}

impl CniError {
    pub fn new(
        cni_version: &str,
        code: u32,
        msg: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            cni_version: cni_version.to_string(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"1.0.0","code":{},"msg":"unprintable error"}}"#,
                self.code
            )
        })
    }
}
