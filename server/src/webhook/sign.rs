//! Standard Webhooks signing: the `whsec_` secret format and the `v1` signature, an HMAC-SHA256
//! over `{webhook-id}.{webhook-timestamp}.{body}`, base64-encoded. Pure; the secret never shows
//! up in `Debug` output.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest key the specification allows (192 bits).
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest key the specification allows (512 bits).
pub const MAX_SECRET_BYTES: usize = 64;

const PREFIX: &str = "whsec_";

/// Why a webhook secret was refused. The text never repeats the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("expected a Standard Webhooks secret starting with whsec_ (whsec_ + base64 of 24 to 64 random bytes, e.g. `echo whsec_$(openssl rand -base64 32)`)")]
    NoPrefix,
    #[error("the part after whsec_ is not valid base64")]
    NotBase64,
    #[error("the key is {0} bytes; use 24 to 64 random bytes")]
    BadLength(usize),
}

/// A decoded signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>`; surrounding whitespace (a trailing newline in a file) is ignored.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::NoPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| SecretError::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(SigningSecret(key))
    }

    /// The `webhook-signature` header value: `v1,` + base64 HMAC-SHA256 of
    /// `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_reference_example_of_the_standard_webhooks_libraries() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = secret.sign("a", 1, b"{}");
        assert_ne!(secret.sign("b", 1, b"{}"), base);
        assert_ne!(secret.sign("a", 2, b"{}"), base);
        assert_ne!(secret.sign("a", 1, b"{ }"), base);
    }

    #[test]
    fn secret_rules() {
        let key = |n: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; n]));
        let cases: Vec<(String, Result<(), SecretError>)> = vec![
            (key(24), Ok(())),
            (key(64), Ok(())),
            (format!("{}\n", key(32)), Ok(())),
            (key(32).trim_end_matches('=').to_owned(), Ok(())),
            (STANDARD.encode([7u8; 32]), Err(SecretError::NoPrefix)),
            ("whsec_not base64!".into(), Err(SecretError::NotBase64)),
            (key(16), Err(SecretError::BadLength(16))),
            (key(65), Err(SecretError::BadLength(65))),
        ];
        for (text, want) in cases {
            assert_eq!(SigningSecret::parse(&text).map(|_| ()), want, "{text:?}");
        }
        assert_eq!(
            format!("{:?}", SigningSecret::parse(&key(32)).unwrap()),
            "SigningSecret(***)"
        );
    }
}
