//! Who may do what: JWT validation (algorithm pinned by configuration,
//! `exp` required, optional `iss`/`aud`, `rooms` claim, the `grants` and
//! `metadata` claims), the start-up check
//! of a public key (type, RSA size, EC curve), coturn REST API TURN
//! credentials, and the `--dev` token. Pure apart from reading the clock.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{JwtAlgorithm, JwtConfig, JwtKey};
use crate::protocol::ErrorCode;
use crate::room::{metadata_bytes, Metadata, RoomId};

/// Why a token (or its use for a room) was refused. `reason()` is the exact
/// WebSocket close reason; REST maps these to 401/403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token was presented")]
    MissingToken,
    #[error("the token is malformed, badly signed or not acceptable")]
    InvalidToken,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not meant for this service")]
    InvalidAudience,
    #[error("the token does not allow this room")]
    RoomForbidden,
    /// The `metadata` claim is larger than `limits.max_metadata_bytes`.
    #[error("the token's metadata claim is too large")]
    MetadataTooLarge,
}

impl AuthError {
    /// Close reason / error code on the wire.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken => "invalid_token",
            AuthError::TokenExpired => "token_expired",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::RoomForbidden => "room_forbidden",
            AuthError::MetadataTooLarge => "metadata_too_large",
        }
    }

    pub fn metric_label(self) -> &'static str {
        self.reason()
    }
}

/// Which rooms a token may join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomAccess {
    All,
    Only(Vec<String>),
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
    /// `exp` claim, Unix seconds.
    pub expires_at: u64,
    pub rooms: RoomAccess,
    /// `"grants": {"room_admin": true}`: may call the server API (for the
    /// rooms in `rooms`). Never set by a participant token.
    pub room_admin: bool,
    /// The `metadata` claim, a JSON object.
    pub metadata: Option<Metadata>,
}

impl Identity {
    pub fn may_join(&self, room: &RoomId) -> bool {
        match &self.rooms {
            RoomAccess::All => true,
            RoomAccess::Only(list) => list.iter().any(|r| r == "*" || r == room.as_str()),
        }
    }
}

/// `"rooms": "a"` or `["a", "b"]`; `null` matches neither, so a token
/// carrying it is refused instead of being read as "no restriction".
#[derive(Deserialize)]
#[serde(untagged)]
enum RoomsClaim {
    One(String),
    Many(Vec<String>),
}

/// Present `rooms` claims go through [`RoomsClaim`] even when they are
/// `null` (serde's `Option` alone would turn `null` into "absent").
fn present_rooms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RoomsClaim>, D::Error> {
    RoomsClaim::deserialize(d).map(Some)
}

/// Longest `sub` / `name` accepted, in characters. Both are copied into
/// every presence frame and every `room-state`; unbounded, one token could
/// make each room-state megabytes long (past the outbound queue bound, which
/// always takes one message).
pub const MAX_IDENTITY_CHARS: usize = 256;

/// `"grants": {"room_admin": true}`. Unknown grants are ignored (a newer
/// backend may mint them); a known one that is not a boolean makes the
/// token invalid rather than being guessed at.
#[derive(Deserialize, Default)]
struct GrantsClaim {
    #[serde(default)]
    room_admin: bool,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present_rooms")]
    rooms: Option<RoomsClaim>,
    #[serde(default)]
    grants: Option<GrantsClaim>,
    /// Anything but an object (or absent) makes the token invalid.
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// Verifies tokens with the configured key and algorithm.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Largest `metadata` claim accepted (compact JSON bytes); `None` = any
    /// (the `token` command, which does not know the server's limit).
    max_metadata_bytes: Option<usize>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// The key in the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[error("jwt key is not usable for {algorithm}")]
pub struct KeyError {
    pub algorithm: &'static str,
    #[source]
    pub problem: Option<KeyProblem>,
}

/// Smallest RSA modulus accepted for RS256, in bits (NIST SP 800-57: 1024
/// bits has been breakable in principle for years).
pub const MIN_RSA_BITS: usize = 2048;

/// Why a PEM file cannot verify tokens of the configured algorithm. Each
/// reads as the end of a sentence starting with the file name; none carries
/// key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("is not a PEM file (expected a -----BEGIN PUBLIC KEY----- block)")]
    NotPem,
    #[error("holds {0} PEM blocks; give exactly one public key")]
    SeveralBlocks(usize),
    #[error("is a private key; give only the public key (`openssl pkey -in private.pem -pubout`): the server never needs the private key")]
    PrivateKey,
    #[error("is a certificate; give its public key (`openssl x509 -in cert.pem -pubkey -noout`)")]
    Certificate,
    #[error("holds a PEM block that is not a public key")]
    NotAPublicKey,
    #[error("is not a valid public key")]
    Malformed,
    #[error("is {found} public key; {algorithm} needs {expected}")]
    WrongType {
        found: &'static str,
        algorithm: &'static str,
        expected: &'static str,
    },
    #[error("is a {bits}-bit RSA key; RS256 needs at least {MIN_RSA_BITS} bits")]
    WeakRsa { bits: usize },
}

mod oid {
    use spki::ObjectIdentifier as Oid;
    pub const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const EC: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
    pub const P521: Oid = Oid::new_unwrap("1.3.132.0.35");
    pub const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
}

/// What a public key is, as far as the algorithm check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa { bits: usize },
    Ec(&'static str),
    Other(&'static str),
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa { .. } => "an RSA",
            KeyKind::Ec("P-256") => "an EC P-256",
            KeyKind::Ec("P-384") => "an EC P-384",
            KeyKind::Ec("P-521") => "an EC P-521",
            KeyKind::Ec(_) => "an EC",
            KeyKind::Other(what) => what,
        }
    }
}

/// Bits of an RSA modulus given as a DER `RSAPublicKey` (PKCS#1).
fn rsa_bits(pkcs1_der: &[u8]) -> Result<usize, KeyProblem> {
    use pkcs1::der::Decode as _;
    let key = pkcs1::RsaPublicKey::from_der(pkcs1_der).map_err(|_| KeyProblem::Malformed)?;
    // `as_bytes` has no leading zero bytes.
    let n = key.modulus.as_bytes();
    Ok(match n.first() {
        None => 0,
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
    })
}

fn spki_kind(der: &[u8]) -> Result<KeyKind, KeyProblem> {
    use spki::der::Decode as _;
    let info = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|_| KeyProblem::Malformed)?;
    let (alg, param) = info.algorithm.oids().map_err(|_| KeyProblem::Malformed)?;
    Ok(match (alg, param) {
        (oid::RSA, _) => {
            let bits = info
                .subject_public_key
                .as_bytes()
                .ok_or(KeyProblem::Malformed)?;
            KeyKind::Rsa {
                bits: rsa_bits(bits)?,
            }
        }
        (oid::EC, Some(oid::P256)) => KeyKind::Ec("P-256"),
        (oid::EC, Some(oid::P384)) => KeyKind::Ec("P-384"),
        (oid::EC, Some(oid::P521)) => KeyKind::Ec("P-521"),
        (oid::EC, _) => KeyKind::Ec("other"),
        (oid::ED25519, _) => KeyKind::Other("an Ed25519"),
        _ => KeyKind::Other("an unsupported"),
    })
}

/// Checks at start-up that `pem_text` is one public key fit for
/// `algorithm`: a private key, a certificate, an RSA key under
/// [`MIN_RSA_BITS`] or an EC key on another curve than P-256 is refused
/// with the reason, instead of a server that starts and then rejects every
/// valid token.
pub fn check_public_key(algorithm: JwtAlgorithm, pem_text: &str) -> Result<(), KeyProblem> {
    let blocks = pem::parse_many(pem_text).map_err(|_| KeyProblem::NotPem)?;
    // A private key anywhere in the file is the mistake to name, even next
    // to a public key: it must not sit on the server.
    if blocks.iter().any(|b| b.tag().ends_with("PRIVATE KEY")) {
        return Err(KeyProblem::PrivateKey);
    }
    let block = match blocks.as_slice() {
        [] => return Err(KeyProblem::NotPem),
        [one] => one,
        many => return Err(KeyProblem::SeveralBlocks(many.len())),
    };
    let kind = match block.tag() {
        "PUBLIC KEY" => spki_kind(block.contents())?,
        "RSA PUBLIC KEY" => KeyKind::Rsa {
            bits: rsa_bits(block.contents())?,
        },
        tag if tag.contains("CERTIFICATE") => return Err(KeyProblem::Certificate),
        _ => return Err(KeyProblem::NotAPublicKey),
    };
    let wrong = |expected| KeyProblem::WrongType {
        found: kind.describe(),
        algorithm: algorithm.as_str(),
        expected,
    };
    match (algorithm, kind) {
        (JwtAlgorithm::Rs256, KeyKind::Rsa { bits }) if bits < MIN_RSA_BITS => {
            Err(KeyProblem::WeakRsa { bits })
        }
        (JwtAlgorithm::Rs256, KeyKind::Rsa { .. }) => Ok(()),
        (JwtAlgorithm::Rs256, _) => Err(wrong("an RSA key")),
        (JwtAlgorithm::Es256, KeyKind::Ec("P-256")) => Ok(()),
        (JwtAlgorithm::Es256, _) => Err(wrong("an EC P-256 key")),
        (JwtAlgorithm::Hs256, _) => Err(wrong("a shared secret, not a key file")),
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

impl Authenticator {
    pub fn new(cfg: &JwtConfig) -> Result<Self, KeyError> {
        let err = |problem| KeyError {
            algorithm: cfg.algorithm.as_str(),
            problem,
        };
        if let JwtKey::PublicKeyPem(pem) = &cfg.key {
            check_public_key(cfg.algorithm, pem).map_err(|p| err(Some(p)))?;
        }
        let key = match (&cfg.key, cfg.algorithm) {
            (JwtKey::Secret(s), JwtAlgorithm::Hs256) => {
                DecodingKey::from_secret(s.expose().as_bytes())
            }
            (JwtKey::PublicKeyPem(pem), JwtAlgorithm::Rs256) => {
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| err(None))?
            }
            (JwtKey::PublicKeyPem(pem), JwtAlgorithm::Es256) => {
                DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| err(None))?
            }
            _ => return Err(err(None)),
        };
        // Exactly one algorithm: a token whose header names another one
        // (alg none, HS256 signed with an RSA public key, ...) is refused.
        let mut validation = Validation::new(algorithm(cfg.algorithm));
        let mut required = vec!["exp", "sub"];
        if cfg.issuer.is_some() {
            required.push("iss");
        }
        if cfg.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Tokens are short-lived and issued by the same deployment; an exact
        // expiry keeps behaviour predictable (and testable).
        validation.leeway = 0;
        match &cfg.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Authenticator {
            key,
            validation,
            max_metadata_bytes: None,
        })
    }

    /// Refuses tokens whose `metadata` claim is larger than `bytes` (compact
    /// JSON) with [`AuthError::MetadataTooLarge`].
    pub fn with_max_metadata_bytes(mut self, bytes: usize) -> Self {
        self.max_metadata_bytes = Some(bytes);
        self
    }

    /// Verifies `token` and extracts the identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                ErrorKind::InvalidAudience => AuthError::InvalidAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::InvalidAudience,
                _ => AuthError::InvalidToken,
            },
        )?;
        let c = data.claims;
        let too_long = |s: &str| s.chars().count() > MAX_IDENTITY_CHARS;
        if c.sub.is_empty() || too_long(&c.sub) || c.name.as_deref().is_some_and(too_long) {
            return Err(AuthError::InvalidToken);
        }
        let rooms = match c.rooms {
            None => RoomAccess::All,
            Some(RoomsClaim::One(r)) if r == "*" => RoomAccess::All,
            Some(RoomsClaim::One(r)) => RoomAccess::Only(vec![r]),
            Some(RoomsClaim::Many(list)) if list.iter().any(|r| r == "*") => RoomAccess::All,
            Some(RoomsClaim::Many(list)) => RoomAccess::Only(list),
        };
        if let (Some(max), Some(metadata)) = (self.max_metadata_bytes, &c.metadata) {
            if metadata_bytes(metadata) > max {
                return Err(AuthError::MetadataTooLarge);
            }
        }
        let username = c
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| c.sub.clone());
        Ok(Identity {
            user_id: c.sub,
            username,
            expires_at: c.exp,
            rooms,
            room_admin: c.grants.unwrap_or_default().room_admin,
            metadata: c.metadata,
        })
    }

    /// Verifies `token` and checks that it may join `room`.
    pub fn authorize(&self, token: Option<&str>, room: &RoomId) -> Result<Identity, AuthError> {
        let identity = self.verify(token.ok_or(AuthError::MissingToken)?)?;
        if identity.may_join(room) {
            Ok(identity)
        } else {
            Err(AuthError::RoomForbidden)
        }
    }

    /// Checks a token offered over the socket (`refresh-token`) to extend a
    /// session of `user_id` in `room`: it must be valid now, name the same
    /// user and allow the room.
    pub fn verify_refresh(
        &self,
        token: &str,
        user_id: &str,
        room: &RoomId,
    ) -> Result<Identity, RefreshError> {
        let identity = self.authorize(Some(token), room)?;
        if identity.user_id != user_id {
            return Err(RefreshError::UserMismatch);
        }
        Ok(identity)
    }
}

/// Why a `refresh-token` was refused; the session goes on until the token
/// it already has expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the token names another user")]
    UserMismatch,
}

impl RefreshError {
    /// The `error` code sent back.
    pub fn error_code(self) -> ErrorCode {
        match self {
            RefreshError::Auth(AuthError::TokenExpired) => ErrorCode::TokenExpired,
            RefreshError::Auth(AuthError::InvalidAudience) => ErrorCode::InvalidAudience,
            RefreshError::Auth(AuthError::RoomForbidden) => ErrorCode::RoomForbidden,
            RefreshError::Auth(
                AuthError::MissingToken | AuthError::InvalidToken | AuthError::MetadataTooLarge,
            ) => ErrorCode::InvalidToken,
            RefreshError::UserMismatch => ErrorCode::UserMismatch,
        }
    }
}

#[derive(Serialize)]
struct DevClaims<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
    iat: u64,
    rooms: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs a `--dev` token for user `sub` called `name`: HS256, valid for
/// `ttl`, for `room` (`"*"`: every room).
pub fn dev_token(
    cfg: &JwtConfig,
    sub: &str,
    name: &str,
    room: &str,
    now_unix: u64,
    ttl: Duration,
) -> Result<String, KeyError> {
    let JwtKey::Secret(secret) = &cfg.key else {
        return Err(KeyError {
            algorithm: "HS256",
            problem: None,
        });
    };
    let claims = DevClaims {
        sub,
        name,
        exp: now_unix + ttl.as_secs(),
        iat: now_unix,
        rooms: [room],
        iss: cfg.issuer.as_deref(),
        aud: cfg.audience.as_deref(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|_| KeyError {
        algorithm: "HS256",
        problem: None,
    })
}

/// Time-limited TURN credentials in coturn's REST API scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnCredential {
    /// `"<unix expiry>:<user id>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub credential: String,
    pub expires_at: u64,
}

/// Builds TURN credentials that expire at `now + ttl`, but never after the
/// JWT (`token_exp`) that asked for them.
pub fn turn_credential(
    secret: &[u8],
    user_id: &str,
    now_unix: u64,
    ttl: Duration,
    token_exp: u64,
) -> TurnCredential {
    let expires_at = now_unix.saturating_add(ttl.as_secs()).min(token_exp);
    let username = format!("{expires_at}:{user_id}");
    // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredential {
        username,
        credential,
        expires_at,
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
