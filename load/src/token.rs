//! Mints participant JWTs with the deployment's signing key: an HS256
//! secret, or an RS256/ES256 private key (PEM). Tokens are never printed.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Which key signs the tokens.
#[derive(Clone)]
pub enum SigningKey {
    Hs256(Vec<u8>),
    Rs256(Vec<u8>),
    Es256(Vec<u8>),
}

/// Signs one token per participant.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    issuer: Option<String>,
    audience: Option<String>,
    ttl_secs: u64,
    hs256_secret: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl Minter {
    pub fn new(
        key: SigningKey,
        issuer: Option<String>,
        audience: Option<String>,
        ttl_secs: u64,
    ) -> anyhow::Result<Self> {
        let (algorithm, encoding, hs256_secret) = match key {
            SigningKey::Hs256(secret) => {
                if secret.is_empty() {
                    bail!("the JWT secret is empty");
                }
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(&secret),
                    Some(secret),
                )
            }
            SigningKey::Rs256(pem) => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem)
                    .context("--jwt-private-key-file is not an RSA private key (PEM)")?,
                None,
            ),
            SigningKey::Es256(pem) => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&pem)
                    .context("--jwt-private-key-file is not a P-256 private key (PEM)")?,
                None,
            ),
        };
        Ok(Minter {
            key: encoding,
            header: Header::new(algorithm),
            issuer,
            audience,
            ttl_secs,
            hs256_secret,
        })
    }

    /// A token for user `user` (also its display name) valid for the TTL.
    pub fn mint(&self, user: &str) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user,
            name: user,
            exp: now + self.ttl_secs,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).context("cannot sign a token")
    }

    /// The HS256 secret, when that is the algorithm (the ceiling relay
    /// verifies the same tokens with it).
    pub fn hs256_secret(&self) -> Option<&[u8]> {
        self.hs256_secret.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Back {
        sub: String,
        name: String,
        aud: String,
        exp: u64,
    }

    #[test]
    fn hs256_tokens_verify_with_the_same_secret_and_carry_the_claims() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let m = Minter::new(
            SigningKey::Hs256(secret.clone()),
            None,
            Some("sb".into()),
            600,
        )
        .unwrap();
        let token = m.mint("load-7").unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["sb"]);
        let back = decode::<Back>(&token, &DecodingKey::from_secret(&secret), &v).unwrap();
        assert_eq!(back.claims.sub, "load-7");
        assert_eq!(back.claims.name, "load-7");
        assert_eq!(back.claims.aud, "sb");
        assert!(back.claims.exp > 600);
        assert_eq!(m.hs256_secret(), Some(secret.as_slice()));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Minter::new(SigningKey::Hs256(Vec::new()), None, None, 1).is_err());
        assert!(Minter::new(SigningKey::Rs256(b"nope".to_vec()), None, None, 1).is_err());
    }
}
