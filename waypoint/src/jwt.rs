//! RequestAuthentication at the waypoint, with Envoy's `jwt_authn` semantics as Istio
//! configures it: tokens are looked for where each rule says (by default
//! `Authorization: Bearer` and the `access_token` query parameter); a request without one
//! passes unauthenticated (AuthorizationPolicy decides: `requestPrincipals: ["*"]` requires
//! one); a token is checked by the rule of its issuer (signature with the rule's JWKS,
//! `exp` and `nbf` with 60 s of clock skew, `aud` when the rule lists audiences); a token
//! that fails, or whose issuer no rule names, is refused 401. A valid token's claims become
//! the request's `request.auth.*`; it is removed from its header unless
//! `forwardOriginalToken`, and its payload or claims are copied to headers when asked.

use amesh_policy::{
    RequestAuth,
    jwt::{HeaderLocation, JwtRule},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use std::collections::HashSet;

/// Clock skew allowed on `exp` and `nbf` (Envoy's default).
const LEEWAY_SECS: u64 = 60;

/// One rule with its keys decoded.
pub struct Provider {
    pub rule: JwtRule,
    /// The keys (with their `kid`), or why there are none.
    keys: Result<Vec<(Option<String>, DecodingKey)>, String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.rule.issuer)
            .field("keys", &self.keys.as_ref().map(Vec::len))
            .finish()
    }
}

impl Provider {
    /// Decodes the rule's JWKS; keys that cannot be used are skipped (a set with none left
    /// refuses every token of this issuer).
    pub fn new(rule: JwtRule) -> Self {
        let keys = if !rule.jwks_error.is_empty() {
            Err(rule.jwks_error.clone())
        } else {
            match serde_json::from_str::<JwkSet>(&rule.jwks) {
                Ok(set) => {
                    let keys: Vec<_> = set
                        .keys
                        .iter()
                        .filter_map(|k| {
                            DecodingKey::from_jwk(k)
                                .ok()
                                .map(|d| (k.common.key_id.clone(), d))
                        })
                        .collect();
                    if keys.is_empty() {
                        Err("the JWKS has no usable key".into())
                    } else {
                        Ok(keys)
                    }
                }
                Err(e) => Err(format!("the JWKS does not read: {e}")),
            }
        };
        Self { rule, keys }
    }

    fn locations_default(&self) -> bool {
        self.rule.from_headers.is_empty()
            && self.rule.from_params.is_empty()
            && self.rule.from_cookies.is_empty()
    }
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Header(http::HeaderName),
    Param,
    Cookie,
}

fn tokens(p: &Provider, parts: &http::request::Parts) -> Vec<(String, Found)> {
    let mut out = Vec::new();
    let headers: Vec<HeaderLocation> = if p.locations_default() {
        vec![HeaderLocation {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }]
    } else {
        p.rule.from_headers.clone()
    };
    for h in &headers {
        let Ok(name) = http::HeaderName::from_bytes(h.name.as_bytes()) else {
            continue;
        };
        for v in parts.headers.get_all(&name) {
            let Ok(v) = v.to_str() else { continue };
            // The prefix is matched without regard to case, as Envoy does for "Bearer ".
            let token = if h.prefix.is_empty() {
                Some(v)
            } else if v.len() >= h.prefix.len()
                && v[..h.prefix.len()].eq_ignore_ascii_case(&h.prefix)
            {
                Some(&v[h.prefix.len()..])
            } else {
                None
            };
            if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
                out.push((t.to_string(), Found::Header(name.clone())));
            }
        }
    }
    let params: Vec<&str> = if p.locations_default() {
        vec!["access_token"]
    } else {
        p.rule.from_params.iter().map(String::as_str).collect()
    };
    for kv in parts.uri.query().unwrap_or_default().split('&') {
        if let Some((k, v)) = kv.split_once('=')
            && params.contains(&k)
            && !v.is_empty()
        {
            out.push((v.to_string(), Found::Param));
        }
    }
    for cookies in parts.headers.get_all(http::header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some((k, v)) = c.trim().split_once('=')
                && p.rule.from_cookies.iter().any(|n| n == k)
                && !v.is_empty()
            {
                out.push((v.to_string(), Found::Cookie));
            }
        }
    }
    out
}

/// The `iss` of a token, read without verifying it: only to pick the rule that checks it.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// Verifies `token` with `p`'s keys; the claims when it holds.
fn verify(p: &Provider, token: &str) -> Result<serde_json::Value, String> {
    let keys = p
        .keys
        .as_ref()
        .map_err(|e| format!("no keys for {}: {e}", p.rule.issuer))?;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| format!("Jwt is not in the form of Header.Payload.Signature: {e}"))?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err("Jwt verification fails: symmetric algorithms are not accepted".into());
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.required_spec_claims = HashSet::new();
    validation.set_issuer(&[p.rule.issuer.as_str()]);
    if p.rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&p.rule.audiences);
    }
    let candidates = keys
        .iter()
        .filter(|(kid, _)| header.kid.is_none() || kid.is_none() || *kid == header.kid);
    let mut last = "Jwt verification fails: no key of the issuer's JWKS matches".to_string();
    for (_, key) in candidates {
        match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                last = match e.kind() {
                    ErrorKind::ExpiredSignature => "Jwt is expired".into(),
                    ErrorKind::ImmatureSignature => "Jwt not yet valid".into(),
                    ErrorKind::InvalidAudience => "Audiences in Jwt are not allowed".into(),
                    ErrorKind::InvalidIssuer => "Jwt issuer is not configured".into(),
                    other => format!("Jwt verification fails: {other:?}"),
                };
                // An expiry or audience verdict is the token's, not the key's: stop.
                if !matches!(
                    e.kind(),
                    ErrorKind::InvalidSignature
                        | ErrorKind::InvalidAlgorithm
                        | ErrorKind::InvalidKeyFormat
                ) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// Authenticates the request's end user with the rules that apply. `Ok(None)`: no token
/// (or no rule applies); `Err`: the reason it is refused (401).
pub fn authenticate(
    providers: &[&Provider],
    parts: &mut http::request::Parts,
) -> Result<Option<RequestAuth>, String> {
    let mut failure = None;
    let mut any_token = false;
    for p in providers {
        for (token, found) in tokens(p, parts) {
            any_token = true;
            if unverified_issuer(&token).as_deref() != Some(p.rule.issuer.as_str()) {
                continue;
            }
            match verify(p, &token) {
                Ok(claims) => return Ok(Some(accept(p, parts, &token, &found, claims))),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
    }
    match (failure, any_token) {
        (Some(e), _) => Err(e),
        (None, true) => Err("Jwt issuer is not configured".into()),
        (None, false) => Ok(None),
    }
}

/// A valid token: the request's `request.auth`, its header removed unless it is to be
/// forwarded, its payload and claims copied to headers as the rule asks.
fn accept(
    p: &Provider,
    parts: &mut http::request::Parts,
    token: &str,
    found: &Found,
    claims: serde_json::Value,
) -> RequestAuth {
    if !p.rule.forward_original_token
        && let Found::Header(name) = found
    {
        parts.headers.remove(name);
    }
    if !p.rule.output_payload_to_header.is_empty()
        && let Some(payload) = token.split('.').nth(1)
        && let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(p.rule.output_payload_to_header.as_bytes()),
            http::HeaderValue::from_str(payload),
        )
    {
        parts.headers.insert(name, value);
    }
    for c in &p.rule.output_claim_to_headers {
        let text = match claims.get(&c.claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(c.header.as_bytes()),
            http::HeaderValue::from_str(&text),
        ) {
            parts.headers.insert(name, value);
        }
    }
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    RequestAuth {
        principal: format!("{}/{}", text("iss"), text("sub")),
        audiences: strings(claims.get("aud")),
        presenter: text("azp"),
        claims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amesh_testbed::jwt::{Issuer, now};
    use serde_json::json;

    fn provider(issuer: &Issuer, edit: impl FnOnce(&mut JwtRule)) -> Provider {
        let mut rule = JwtRule {
            issuer: issuer.issuer.clone(),
            jwks: issuer.jwks(),
            ..Default::default()
        };
        edit(&mut rule);
        Provider::new(rule)
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    #[test]
    fn tokens_are_checked_as_envoy_checks_them() {
        let iss = Issuer::new("https://issuer.test", "k1");
        let other = Issuer::new("https://other.test", "k2");
        let p = provider(&iss, |r| r.audiences = vec!["shop".into()]);
        let ok = iss.token(json!({"sub": "alice", "aud": "shop", "azp": "web", "groups": ["dev"]}));
        // Valid: request.auth from the claims; the token is not forwarded.
        let mut req = parts("/", &[("authorization", &bearer(&ok))]);
        let auth = authenticate(&[&p], &mut req).unwrap().unwrap();
        assert_eq!(auth.principal, "https://issuer.test/alice");
        assert_eq!(
            (auth.audiences.as_slice(), auth.presenter.as_str()),
            (&["shop".to_string()][..], "web")
        );
        assert!(
            req.headers.get("authorization").is_none(),
            "not forwarded by default"
        );
        // No token: passes, unauthenticated.
        assert_eq!(authenticate(&[&p], &mut parts("/", &[])).unwrap(), None);
        // The default query parameter.
        let mut q = parts(&format!("/?access_token={ok}"), &[]);
        assert!(authenticate(&[&p], &mut q).unwrap().is_some());
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "expired",
                iss.token(json!({"sub": "a", "aud": "shop", "exp": now() - 3600})),
                "Jwt is expired",
            ),
            (
                "not yet valid",
                iss.token(json!({"sub": "a", "aud": "shop", "nbf": now() + 3600})),
                "Jwt not yet valid",
            ),
            (
                "wrong audience",
                iss.token(json!({"sub": "a", "aud": "billing"})),
                "Audiences in Jwt are not allowed",
            ),
            (
                "unknown issuer",
                other.token(json!({"sub": "a", "aud": "shop"})),
                "Jwt issuer is not configured",
            ),
            (
                "signed by another key",
                {
                    // The right issuer, the wrong key.
                    let forged = Issuer::new("https://issuer.test", "k1");
                    forged.token(json!({"sub": "a", "aud": "shop"}))
                },
                "Jwt verification fails",
            ),
            (
                "garbage",
                "not.a.jwt".into(),
                "Jwt issuer is not configured",
            ),
        ];
        for (what, token, reason) in cases {
            let e = authenticate(
                &[&p],
                &mut parts("/", &[("authorization", &bearer(&token))]),
            )
            .unwrap_err();
            assert!(e.starts_with(reason), "{what}: {e}");
        }
        // Within the clock skew an expired token still holds.
        let just = iss.token(json!({"sub": "a", "aud": "shop", "exp": now() - 10}));
        assert!(authenticate(&[&p], &mut parts("/", &[("authorization", &bearer(&just))])).is_ok());
    }

    #[test]
    fn locations_forwarding_and_outputs_follow_the_rule() {
        let iss = Issuer::new("https://issuer.test", "k1");
        let p = provider(&iss, |r| {
            r.from_headers = vec![HeaderLocation {
                name: "x-jwt".into(),
                prefix: "Token ".into(),
            }];
            r.from_cookies = vec!["session".into()];
            r.forward_original_token = true;
            r.output_payload_to_header = "x-jwt-payload".into();
            r.output_claim_to_headers = vec![amesh_policy::jwt::ClaimToHeader {
                header: "x-user".into(),
                claim: "sub".into(),
            }];
        });
        let t = iss.token(json!({"sub": "bob"}));
        let mut req = parts("/", &[("x-jwt", &format!("Token {t}"))]);
        let auth = authenticate(&[&p], &mut req).unwrap().unwrap();
        assert_eq!(auth.principal, "https://issuer.test/bob");
        assert!(req.headers.get("x-jwt").is_some(), "forwarded");
        assert_eq!(req.headers["x-user"], "bob");
        assert_eq!(req.headers["x-jwt-payload"], t.split('.').nth(1).unwrap());
        let mut c = parts("/", &[("cookie", &format!("a=1; session={t}"))]);
        assert!(authenticate(&[&p], &mut c).unwrap().is_some());
        // Not where the rule looks: no token at all.
        let mut elsewhere = parts("/", &[("authorization", &bearer(&t))]);
        assert_eq!(authenticate(&[&p], &mut elsewhere).unwrap(), None);
    }

    #[test]
    fn a_rule_without_its_keys_refuses_its_tokens() {
        let iss = Issuer::new("https://issuer.test", "k1");
        let p = provider(&iss, |r| {
            r.jwks.clear();
            r.jwks_error = "https://issuer.test/jwks: connection refused".into();
        });
        let t = iss.token(json!({"sub": "a"}));
        let e =
            authenticate(&[&p], &mut parts("/", &[("authorization", &bearer(&t))])).unwrap_err();
        assert!(e.contains("connection refused"), "{e}");
    }
}
