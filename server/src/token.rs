//! `switchboard-server token`: checks the arguments (every problem at once),
//! builds the claims and signs them with the configured key, then verifies
//! the result as the server would before it is printed. It does not decide
//! what a grant or `metadata` allows: the server does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::{Authenticator, MAX_IDENTITY_CHARS};
use crate::config::{JwtAlgorithm, SigningConfig, SigningKey, TokenArgs};
use crate::room::RoomId;

/// Exit code for bad `token` arguments (EX_USAGE from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Lifetime when `--ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Longest `--ttl`: a token cannot be revoked before it expires, so a
/// forgotten one must not stay valid for ever.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A capability of the server API a token may carry (`grants` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// Act on rooms through the server API.
    RoomAdmin,
}

impl Grant {
    pub const ALL: [Grant; 1] = [Grant::RoomAdmin];

    /// The claim key: `"grants": {"room_admin": true}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::RoomAdmin => "room_admin",
        }
    }
}

/// A checked `token` request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    pub sub: String,
    /// `--name`, else the user id.
    pub name: String,
    /// `--room` values, else `["*"]` (every room).
    pub rooms: Vec<String>,
    pub ttl: Duration,
    pub grants: Vec<Grant>,
    pub metadata: Option<Map<String, Value>>,
}

/// One bad argument; `Display` is one line naming the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub flag: &'static str,
    pub message: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token error: {}: {}", self.flag, self.message)
    }
}

/// Checks every argument and reports every problem, in flag order.
pub fn request(args: &TokenArgs) -> Result<TokenRequest, Vec<ArgError>> {
    let mut errors = Vec::new();
    let mut err = |flag, message: String| errors.push(ArgError { flag, message });
    let too_long = |s: &str| s.chars().count() > MAX_IDENTITY_CHARS;

    let sub = args.sub.as_deref().map(str::trim).unwrap_or_default();
    if sub.is_empty() {
        err("--sub", "required: the user id (`sub` claim)".into());
    } else if too_long(sub) {
        err(
            "--sub",
            format!("longer than {MAX_IDENTITY_CHARS} characters; the server refuses such tokens"),
        );
    }
    let name = match args.name.as_deref().map(str::trim) {
        None => sub,
        Some("") => {
            err(
                "--name",
                "must not be empty (leave it out to use the user id)".into(),
            );
            sub
        }
        Some(n) if too_long(n) => {
            err(
                "--name",
                format!(
                    "longer than {MAX_IDENTITY_CHARS} characters; the server refuses such tokens"
                ),
            );
            n
        }
        Some(n) => n,
    };
    let bad_rooms: Vec<String> = args
        .rooms
        .iter()
        .filter(|r| *r != "*" && RoomId::parse(r).is_err())
        .map(|r| format!("{r:?}"))
        .collect();
    if !bad_rooms.is_empty() {
        err(
            "--room",
            format!(
                "expected room ids of 1-64 characters A-Z, a-z, 0-9, '_' or '-' (or * for every room), got {}",
                bad_rooms.join(", ")
            ),
        );
    }
    let ttl = match args.ttl.as_deref() {
        None => DEFAULT_TTL,
        Some(v) => parse_ttl(v).unwrap_or_else(|| {
            err(
                "--ttl",
                format!(
                    "expected a lifetime like 90s, 15m, 1h or 7d (at most {}d), got {v:?}",
                    MAX_TTL.as_secs() / 86400
                ),
            );
            DEFAULT_TTL
        }),
    };
    let mut grants = Vec::new();
    for g in &args.grants {
        match Grant::ALL.iter().find(|k| k.as_str() == g.trim()) {
            Some(k) if !grants.contains(k) => grants.push(*k),
            Some(_) => {}
            None => {
                let known: Vec<&str> = Grant::ALL.iter().map(|k| k.as_str()).collect();
                err(
                    "--grant",
                    format!("unknown grant {g:?} (known: {})", known.join(", ")),
                );
            }
        }
    }
    let metadata = args
        .metadata
        .as_deref()
        .and_then(|m| match serde_json::from_str::<Value>(m) {
            Ok(Value::Object(map)) => Some(map),
            Ok(other) => {
                err(
                    "--metadata",
                    format!(
                        "expected a JSON object like '{{\"team\":\"blue\"}}', got {}",
                        json_kind(&other)
                    ),
                );
                None
            }
            Err(e) => {
                err("--metadata", format!("not valid JSON: {e}"));
                None
            }
        });
    let rooms = if args.rooms.is_empty() {
        vec!["*".to_owned()]
    } else {
        args.rooms.clone()
    };
    let request = TokenRequest {
        sub: sub.to_owned(),
        name: name.to_owned(),
        rooms,
        ttl,
        grants,
        metadata,
    };
    if errors.is_empty() {
        Ok(request)
    } else {
        Err(errors)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `90s`, `15m`, `1h`, `7d` or plain seconds; between 1 s and [`MAX_TTL`].
pub fn parse_ttl(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    let secs = digits.parse::<u64>().ok()?.checked_mul(per_unit)?;
    (1..=MAX_TTL.as_secs())
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// The claims of a minted token (docs/tokens.md lists them).
#[derive(Debug, Serialize, PartialEq)]
pub struct Claims<'a> {
    pub sub: &'a str,
    pub name: &'a str,
    pub rooms: &'a [String],
    pub iat: u64,
    pub exp: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<&'static str, bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
}

pub fn claims<'a>(req: &'a TokenRequest, signing: &'a SigningConfig, now: u64) -> Claims<'a> {
    Claims {
        sub: &req.sub,
        name: &req.name,
        rooms: &req.rooms,
        iat: now,
        exp: now.saturating_add(req.ttl.as_secs()),
        grants: req.grants.iter().map(|g| (g.as_str(), true)).collect(),
        metadata: req.metadata.as_ref(),
        iss: signing.issuer.as_deref(),
        aud: signing.audience.as_deref(),
    }
}

/// Why a checked request could not become a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot sign with the configured {algorithm} key")]
    Sign {
        algorithm: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("the configured verification key is not usable: {0}")]
    Verifier(#[from] crate::auth::KeyError),
    #[error("the server would refuse this token ({reason}): check that jwt.private_key_file and jwt.public_key_file are one key pair")]
    Refused { reason: &'static str },
}

/// Signs the claims for `req` and checks the token as the server would.
pub fn mint(req: &TokenRequest, signing: &SigningConfig, now: u64) -> Result<String, MintError> {
    let algorithm = signing.algorithm.as_str();
    let sign_err = |source| MintError::Sign { algorithm, source };
    let key = match &signing.key {
        SigningKey::Secret(s) => EncodingKey::from_secret(s.expose().as_bytes()),
        SigningKey::PrivateKeyPem(pem) => match signing.algorithm {
            JwtAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem.expose().as_bytes()),
            _ => EncodingKey::from_ec_pem(pem.expose().as_bytes()),
        }
        .map_err(sign_err)?,
    };
    let alg = match signing.algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    };
    let token = jsonwebtoken::encode(&Header::new(alg), &claims(req, signing, now), &key)
        .map_err(sign_err)?;
    if let Some(verify) = &signing.verify {
        Authenticator::new(verify)?
            .verify(&token)
            .map_err(|e| MintError::Refused { reason: e.reason() })?;
    }
    Ok(token)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
