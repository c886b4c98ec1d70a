//! Istio's `RequestAuthentication` (security.istio.io/v1): the resource, and the rules a
//! waypoint validates end-user JWTs with. The control plane resolves `jwksUri` and hands the
//! keys inline (as istiod does), so a waypoint never fetches anything itself.

use crate::crd::{ObjectMeta, Selector, TargetRef};
use serde::{Deserialize, Serialize};

/// `kind: RequestAuthentication`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestAuthenticationResource {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleResource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRuleResource {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<HeaderLocation>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderLocation {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// One rule as a waypoint applies it: the keys are inline (`jwks`), or `jwks_error` says why
/// they could not be had; then every token of this issuer is refused (fail closed, as Istio
/// does with its fake JWKS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// A JWK Set, as JSON.
    pub jwks: String,
    pub jwks_error: String,
    /// Where tokens are looked for; all three empty: `Authorization: Bearer` and the
    /// `access_token` query parameter, Istio's defaults.
    pub from_headers: Vec<HeaderLocation>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub forward_original_token: bool,
    pub output_payload_to_header: String,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A RequestAuthentication for waypoints: its rules and what it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub name: String,
    pub namespace: String,
    pub targets: Vec<TargetRef>,
    /// Rules with `jwks_uri` still to resolve (`jwks` empty then).
    pub rules: Vec<(JwtRule, Option<String>)>,
}

/// Why a RequestAuthentication cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{namespace}/{name}: {field}: {reason}")]
pub struct Invalid {
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// Translates a RequestAuthentication that targets waypoints. `Ok(None)`: it has no target
/// (a selector policy: the sidecar model's, not enforced by amesh).
pub fn request_authentication(
    r: &RequestAuthenticationResource,
) -> Result<Option<Translated>, Invalid> {
    let (name, namespace) = (r.metadata.name.clone(), r.metadata.namespace.clone());
    let invalid = |field: String, reason: String| Invalid {
        namespace: namespace.clone(),
        name: name.clone(),
        field,
        reason,
    };
    let refs: Vec<&serde_json::Value> = r
        .spec
        .target_ref
        .iter()
        .chain(&r.spec.target_refs)
        .collect();
    if refs.is_empty() {
        return Ok(None);
    }
    let targets = crate::crd::target_refs(&refs, &namespace)
        .map_err(|(field, reason)| invalid(field, reason))?;
    let mut rules = Vec::new();
    for (i, j) in r.spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        if j.issuer.is_empty() {
            return Err(invalid(at("issuer"), "missing".into()));
        }
        let uri = match (&j.jwks, &j.jwks_uri) {
            (Some(inline), _) => {
                check_jwks(inline).map_err(|e| invalid(at("jwks"), e))?;
                None
            }
            (None, Some(uri)) if uri.starts_with("https://") || uri.starts_with("http://") => {
                Some(uri.clone())
            }
            (None, Some(uri)) => {
                return Err(invalid(
                    at("jwksUri"),
                    format!("{uri:?} is not an http(s) URL"),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    at("jwks"),
                    "neither jwks nor jwksUri (OpenID discovery of the issuer is not supported)"
                        .into(),
                ));
            }
        };
        for (k, h) in j.from_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(invalid(
                    at(&format!("fromHeaders[{k}].name")),
                    format!("{:?} is not a header name", h.name),
                ));
            }
        }
        for (k, c) in j.output_claim_to_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(c.header.as_bytes()).is_err() || c.claim.is_empty() {
                return Err(invalid(
                    at(&format!("outputClaimToHeaders[{k}]")),
                    "needs a header name and a claim".into(),
                ));
            }
        }
        rules.push((
            JwtRule {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                jwks: j.jwks.clone().unwrap_or_default(),
                jwks_error: String::new(),
                from_headers: j.from_headers.clone(),
                from_params: j.from_params.clone(),
                from_cookies: j.from_cookies.clone(),
                forward_original_token: j.forward_original_token,
                output_payload_to_header: j.output_payload_to_header.clone().unwrap_or_default(),
                output_claim_to_headers: j.output_claim_to_headers.clone(),
            },
            uri,
        ));
    }
    Ok(Some(Translated {
        name,
        namespace,
        targets,
        rules,
    }))
}

/// Whether `text` is a JWK Set with at least one key.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() => Ok(()),
        _ => Err("not a JWK Set (no \"keys\")".into()),
    }
}
