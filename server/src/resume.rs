//! Resume tokens and the resume settings, pure: a token proves that its holder joined as
//! one participant of one room as one user (JWT `sub`), until an expiry; it is an HMAC with
//! a server key, so nobody can make one for another participant or user. Whether that
//! participant is still held (within its grace window) and what it missed is the hub's
//! business; this module does no I/O and reads no clock of its own.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::inbox::InboxLimits;
use crate::room::RoomId;

type HmacSha256 = Hmac<sha2::Sha256>;

/// Token format version, the first dot-separated field.
const VERSION: &str = "v1";

/// Why a resume was refused; the close reason the client sees (1008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token is past its expiry, or the participant is no longer held (its grace
    /// window ended, or it left).
    #[error("resume_expired")]
    Expired,
    /// The token is malformed, forged, for another room or user, or `last_seq` is not a
    /// seq this participant was delivered.
    #[error("resume_invalid")]
    Invalid,
    /// A message the client missed is no longer in the inbox.
    #[error("resume_overflow")]
    Overflow,
}

impl Refusal {
    /// Close reason and metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Expired => "resume_expired",
            Refusal::Invalid => "resume_invalid",
            Refusal::Overflow => "resume_overflow",
        }
    }
}

/// The server's resume key and settings.
#[derive(Clone)]
pub struct Resume {
    key: Vec<u8>,
    /// How long a participant whose connection was lost stays in its rooms waiting for a
    /// resume; zero turns resuming off.
    pub grace: Duration,
    /// What its inbox keeps meanwhile.
    pub inbox: InboxLimits,
}

impl std::fmt::Debug for Resume {
    // The key is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("grace", &self.grace)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

/// A resume request as the upgrade carried it: `?resume=<token>&last_seq=<m>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    pub token: String,
    /// `None` when `last_seq` was missing or not a number (refused as invalid).
    pub last_seq: Option<u64>,
}

impl ResumeRequest {
    /// From the upgrade's query: `None` without a `resume` parameter.
    pub fn from_query(resume: Option<&str>, last_seq: Option<&str>) -> Option<Self> {
        let token = resume.filter(|t| !t.is_empty())?;
        Some(ResumeRequest {
            token: token.to_owned(),
            // `last_seq` may be left out before anything was delivered.
            last_seq: match last_seq {
                None | Some("") => Some(0),
                Some(s) => s.parse().ok(),
            },
        })
    }
}

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub participant_id: String,
}

impl Resume {
    /// Resume with `key` (the HMAC key; any length, 32 random bytes or more advised).
    pub fn new(key: Vec<u8>, grace: Duration, inbox: InboxLimits) -> Self {
        Resume { key, grace, inbox }
    }

    /// Whether resuming is on (a grace window above zero).
    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }

    fn mac(
        &self,
        participant_id: &str,
        room: &RoomId,
        user_id: &str,
        expires_at: u64,
    ) -> HmacSha256 {
        // Any key length is accepted by HMAC; the fallback is never taken.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| HmacSha256::new_from_slice(b"switchboard").expect("static key"));
        // Length-prefixed fields: no two different tuples hash the same bytes.
        for field in [
            VERSION,
            participant_id,
            room.as_str(),
            user_id,
            &expires_at.to_string(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// The token for `participant_id` in `room` as `user_id`, valid until `expires_at`
    /// (Unix seconds): `v1.<participant_id>.<expires_at>.<base64url HMAC-SHA256>`.
    pub fn issue(
        &self,
        participant_id: &str,
        room: &RoomId,
        user_id: &str,
        expires_at: u64,
    ) -> String {
        let tag = self
            .mac(participant_id, room, user_id, expires_at)
            .finalize()
            .into_bytes();
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag);
        format!("{VERSION}.{participant_id}.{expires_at}.{tag}")
    }

    /// Checks `token` for `room` and `user_id` at `now` (Unix seconds).
    pub fn verify(
        &self,
        token: &str,
        room: &RoomId,
        user_id: &str,
        now: u64,
    ) -> Result<Claims, Refusal> {
        let mut parts = token.split('.');
        let (Some(version), Some(participant_id), Some(expires_at), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Invalid);
        };
        if version != VERSION || participant_id.is_empty() || participant_id.len() > 64 {
            return Err(Refusal::Invalid);
        }
        let expires_at: u64 = expires_at.parse().map_err(|_| Refusal::Invalid)?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Refusal::Invalid)?;
        // Constant-time comparison.
        self.mac(participant_id, room, user_id, expires_at)
            .verify_slice(&tag)
            .map_err(|_| Refusal::Invalid)?;
        // Only a genuine token learns that it expired.
        if now > expires_at {
            return Err(Refusal::Expired);
        }
        Ok(Claims {
            participant_id: participant_id.to_owned(),
        })
    }
}

/// The key for resume tokens when none is configured: derived from the HS256 JWT secret
/// (every replica that verifies the same tokens derives the same key), else random to
/// this process (resuming then works only on the same replica).
pub fn derive_key(jwt_secret: Option<&[u8]>) -> (Vec<u8>, bool) {
    match jwt_secret {
        Some(secret) => {
            let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| {
                HmacSha256::new_from_slice(b"switchboard").expect("static key")
            });
            mac.update(b"switchboard resume token key v1");
            (mac.finalize().into_bytes().to_vec(), true)
        }
        None => {
            let key: [u8; 32] = rand::random();
            (key.to_vec(), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume() -> Resume {
        Resume::new(
            b"0123456789abcdef0123456789abcdef".to_vec(),
            Duration::from_secs(30),
            InboxLimits {
                max_messages: 10,
                max_bytes: 1000,
            },
        )
    }

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn a_token_is_good_for_its_participant_room_and_user_until_it_expires() {
        let r = resume();
        let token = r.issue("p-1", &room("r"), "alice", 1000);
        assert_eq!(
            r.verify(&token, &room("r"), "alice", 999),
            Ok(Claims {
                participant_id: "p-1".into()
            })
        );
        assert_eq!(
            r.verify(&token, &room("r"), "alice", 1000)
                .map(|c| c.participant_id),
            Ok("p-1".into())
        );
        assert_eq!(
            r.verify(&token, &room("r"), "alice", 1001),
            Err(Refusal::Expired)
        );
        assert_eq!(
            r.verify(&token, &room("other"), "alice", 999),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            r.verify(&token, &room("r"), "mallory", 999),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_invalid() {
        let r = resume();
        let token = r.issue("p-1", &room("r"), "alice", 1000);
        let other_key = Resume::new(b"another key".to_vec(), r.grace, r.inbox);
        let forged_key = other_key.issue("p-1", &room("r"), "alice", 1000);
        // Someone else's participant id, or a later expiry, with the real tag.
        let tag = token.rsplit('.').next().unwrap();
        let stolen_id = format!("v1.p-2.1000.{tag}");
        let extended = format!("v1.p-1.99999.{tag}");
        for bad in [
            forged_key.as_str(),
            stolen_id.as_str(),
            extended.as_str(),
            "",
            "v1",
            "v1.p-1.1000",
            "v2.p-1.1000.AAAA",
            "v1.p-1.x.AAAA",
            "v1.p-1.1000.not base64!",
            &format!("{token}.extra"),
        ] {
            assert_eq!(
                r.verify(bad, &room("r"), "alice", 10),
                Err(Refusal::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_request_reads_resume_and_last_seq() {
        assert_eq!(ResumeRequest::from_query(None, Some("3")), None);
        assert_eq!(ResumeRequest::from_query(Some(""), Some("3")), None);
        assert_eq!(
            ResumeRequest::from_query(Some("t"), Some("3")),
            Some(ResumeRequest {
                token: "t".into(),
                last_seq: Some(3)
            })
        );
        assert_eq!(
            ResumeRequest::from_query(Some("t"), None).unwrap().last_seq,
            Some(0)
        );
        assert_eq!(
            ResumeRequest::from_query(Some("t"), Some("-1"))
                .unwrap()
                .last_seq,
            None
        );
        assert_eq!(
            ResumeRequest::from_query(Some("t"), Some("x"))
                .unwrap()
                .last_seq,
            None
        );
    }

    #[test]
    fn the_derived_key_is_the_same_for_the_same_jwt_secret() {
        let (a, shared) = derive_key(Some(b"secret"));
        assert!(shared);
        assert_eq!(a, derive_key(Some(b"secret")).0);
        assert_ne!(a, derive_key(Some(b"other")).0);
        let (random, shared) = derive_key(None);
        assert!(!shared);
        assert_ne!(random, derive_key(None).0);
    }
}
