//! A JWT issuer for tests: a fresh P-256 key (ES256), its JWK Set, and tokens signed with it
//! by a maintained JWT library (jsonwebtoken), so that the waypoint is tested against tokens
//! it did not make itself.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub struct Issuer {
    pub issuer: String,
    pub kid: String,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Issuer {
    pub fn new(issuer: &str, kid: &str) -> Self {
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            key: rcgen::KeyPair::generate().expect("a P-256 key"),
        }
    }

    /// The public key as a JWK Set (JSON).
    pub fn jwks(&self) -> String {
        // Uncompressed point: 0x04 || x || y.
        let raw = self.key.public_key_raw();
        let (x, y) = raw[1..].split_at(32);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": self.kid, "x": b64(x), "y": b64(y),
        }]})
        .to_string()
    }

    /// A token with `claims` (plus `iss`, unless they set it), valid for an hour.
    pub fn token(&self, claims: serde_json::Value) -> String {
        let mut claims = claims;
        if claims.get("iss").is_none() {
            claims["iss"] = self.issuer.clone().into();
        }
        if claims.get("exp").is_none() {
            claims["exp"] = (now() + 3600).into();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, &claims, &key).expect("signing a token")
    }
}
