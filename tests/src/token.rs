//! JWTs for the tests: well-formed HS256/RS256/ES256 tokens with chosen claims, and crafted bad
//! ones (alg none, HS/RS confusion, tampered signature). Keys are the test-only PEM fixtures.
//!
//! The one place the workspace's tests mint tokens: the end-to-end tests here, the server's
//! unit and in-process tests and the load generator's tests all sign through [`Claims`] or,
//! for claim shapes [`Claims`] cannot express (`rooms: null`, `nbf`, odd types), [`hs256`] and
//! [`sign`] with any serializable claims.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Value};

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Test-only RSA public key (SPKI PEM) matching [`rs256`].
pub fn rsa_public_key_path() -> PathBuf {
    fixture("test-only-rsa-public.pem")
}

/// Test-only EC P-256 public key (SPKI PEM) matching [`es256`].
pub fn ec_public_key_path() -> PathBuf {
    fixture("test-only-ec-public.pem")
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// JWT claims as the server reads them; `None` fields are left out of the token.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// User id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Rooms this token may join (`"*"` = all); absent = all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Server API capabilities, e.g. `{"room_admin": true}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Value>,
    /// Application data about the participant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl Claims {
    /// `sub` = `user`, `name` = "User <user>", expires in one hour, no iss/aud/rooms.
    pub fn user(user: &str) -> Self {
        Claims {
            sub: Some(user.to_string()),
            name: Some(format!("User {user}")),
            exp: Some(now_secs() + 3600),
            iss: None,
            aud: None,
            rooms: None,
            grants: None,
            metadata: None,
        }
    }

    /// A backend's server API token: `sub` = `backend`, `"grants": {"room_admin": true}`.
    pub fn room_admin() -> Self {
        Claims::user("backend").grants(json!({"room_admin": true}))
    }

    /// Sets the `grants` claim.
    pub fn grants(mut self, grants: Value) -> Self {
        self.grants = Some(grants);
        self
    }

    /// Sets the `metadata` claim.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets `exp` to now + `secs` (negative = in the past).
    pub fn expires_in(mut self, secs: i64) -> Self {
        self.exp = Some(now_secs().saturating_add_signed(secs));
        self
    }

    /// Sets `iss`.
    pub fn issuer(mut self, iss: &str) -> Self {
        self.iss = Some(iss.to_string());
        self
    }

    /// Sets `aud`.
    pub fn audience(mut self, aud: &str) -> Self {
        self.aud = Some(aud.to_string());
        self
    }

    /// Sets the `rooms` claim.
    pub fn rooms(mut self, rooms: &[&str]) -> Self {
        self.rooms = Some(rooms.iter().map(|r| r.to_string()).collect());
        self
    }

    /// The display name (`name` claim).
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// HS256 with `secret`.
    pub fn hs256(&self, secret: &str) -> String {
        hs256(self, secret)
    }

    /// RS256 with the test-only RSA key.
    pub fn rs256(&self) -> String {
        let key = EncodingKey::from_rsa_pem(&read_fixture("test-only-rsa-private.pem"))
            .expect("test RSA key parses");
        sign(Algorithm::RS256, self, &key)
    }

    /// ES256 with the test-only P-256 key.
    pub fn es256(&self) -> String {
        let key = EncodingKey::from_ec_pem(&read_fixture("test-only-ec-private.pem"))
            .expect("test EC key parses");
        sign(Algorithm::ES256, self, &key)
    }

    /// `alg: none`, empty signature.
    pub fn alg_none(&self) -> String {
        let header = json!({"alg": "none", "typ": "JWT"});
        format!(
            "{}.{}.",
            b64_json(&header),
            b64_json(&serde_json::to_value(self).expect("claims serialize"))
        )
    }

    /// HS256 "signed" with the RSA public key PEM bytes as the HMAC secret: the classic
    /// algorithm-confusion attack on a server that takes `alg` from the token.
    pub fn hs256_with_rsa_public_key(&self) -> String {
        let public_pem = read_fixture("test-only-rsa-public.pem");
        sign(
            Algorithm::HS256,
            self,
            &EncodingKey::from_secret(&public_pem),
        )
    }
}

/// Any `claims` signed with `alg` and `key`.
pub fn sign(alg: Algorithm, claims: &impl Serialize, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).expect("test token encodes")
}

/// Any `claims` (e.g. a `json!` value) signed HS256 with `secret`.
pub fn hs256(claims: &impl Serialize, secret: &str) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json serializes"))
}

/// The same token with one signature byte changed (still valid base64url).
pub fn tamper_signature(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').expect("token has a signature part");
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).expect("signature is base64url");
    let first = bytes.first_mut().expect("signature is not empty");
    *first ^= 0x01;
    format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// coturn REST credential: `base64(HMAC-SHA1(secret, username))`.
pub fn coturn_credential(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_credential_matches_known_vector() {
        // Computed independently with: printf '%s' '1700000000:alice' |
        //   openssl dgst -sha1 -hmac 'north' -binary | base64
        assert_eq!(
            coturn_credential("north", "1700000000:alice"),
            "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        );
    }

    #[test]
    fn tampered_token_differs_only_in_signature() {
        let token = Claims::user("u").hs256("s");
        let bad = tamper_signature(&token);
        assert_ne!(token, bad);
        assert_eq!(
            token.rsplit_once('.').unwrap().0,
            bad.rsplit_once('.').unwrap().0
        );
    }

    #[test]
    fn alg_none_token_has_empty_signature() {
        let token = Claims::user("u").alg_none();
        assert!(token.ends_with('.'));
        let header = token.split('.').next().unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "none");
    }
}
