//! JWT checks with real keys (fixed PEM test keys under tests/keys) and the
//! coturn REST credential against a vector computed with `openssl dgst`.

use super::*;
use crate::config::{JwtAlgorithm, JwtConfig, JwtKey, Secret};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use switchboard_e2e::token;

const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../tests/keys/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../tests/keys/ec_public.pem");
const RSA_PUBLIC_PKCS1: &str = include_str!("../tests/keys/rsa_public_pkcs1.pem");
const RSA_1024_PUBLIC: &str = include_str!("../tests/keys/rsa_1024_public.pem");
const EC_P384_PUBLIC: &str = include_str!("../tests/keys/ec_p384_public.pem");

fn hs(secret: &str) -> JwtConfig {
    JwtConfig {
        algorithm: JwtAlgorithm::Hs256,
        key: JwtKey::Secret(Secret::new(secret)),
        issuer: None,
        audience: None,
    }
}

fn rs() -> JwtConfig {
    JwtConfig {
        algorithm: JwtAlgorithm::Rs256,
        key: JwtKey::PublicKeyPem(RSA_PUBLIC.into()),
        issuer: None,
        audience: None,
    }
}

/// `claims` signed RS256 with the private half of [`RSA_PUBLIC`].
fn sign_rs(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    token::sign(Algorithm::RS256, claims, &key)
}

/// `claims` signed ES256 with the private half of [`EC_PUBLIC`].
fn sign_es(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    token::sign(Algorithm::ES256, claims, &key)
}

fn later() -> u64 {
    now_unix() + 600
}

fn room(r: &str) -> RoomId {
    RoomId::parse(r).unwrap()
}

#[test]
fn valid_hs256_token() {
    let auth = Authenticator::new(&hs("s3cret")).unwrap();
    let t = token::hs256(
        &json!({"sub":"alice","name":"Alice","exp":later(),"rooms":["a","b"]}),
        "s3cret",
    );
    let id = auth.verify(&t).unwrap();
    assert_eq!(id.user_id, "alice");
    assert_eq!(id.username, "Alice");
    assert_eq!(id.rooms, RoomAccess::Only(vec!["a".into(), "b".into()]));
    assert!(id.may_join(&room("a")));
    assert_eq!(
        auth.authorize(Some(&t), &room("c")),
        Err(AuthError::RoomForbidden)
    );
    assert!(auth.authorize(Some(&t), &room("b")).is_ok());
}

#[test]
fn name_defaults_to_sub_and_rooms_to_all() {
    let auth = Authenticator::new(&hs("k")).unwrap();
    let id = auth
        .verify(&token::hs256(&json!({"sub":"bob","exp":later()}), "k"))
        .unwrap();
    assert_eq!(id.username, "bob");
    assert_eq!(id.rooms, RoomAccess::All);
    let id = auth
        .verify(&token::hs256(
            &json!({"sub":"bob","exp":later(),"rooms":["x","*"]}),
            "k",
        ))
        .unwrap();
    assert_eq!(id.rooms, RoomAccess::All);
    let id = auth
        .verify(&token::hs256(
            &json!({"sub":"bob","exp":later(),"rooms":"*"}),
            "k",
        ))
        .unwrap();
    assert_eq!(id.rooms, RoomAccess::All);
}

#[test]
fn refusals() {
    let auth = Authenticator::new(&hs("right")).unwrap();
    let good = token::hs256(&json!({"sub":"a","exp":later()}), "right");
    let (head, rest) = good.split_once('.').unwrap();
    let (body, _sig) = rest.split_once('.').unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let cases: Vec<(&str, String, AuthError)> = vec![
        ("empty", String::new(), AuthError::MissingToken),
        ("garbage", "not.a.jwt".into(), AuthError::InvalidToken),
        (
            "wrong secret",
            token::hs256(&json!({"sub":"a","exp":later()}), "wrong"),
            AuthError::InvalidToken,
        ),
        (
            "expired",
            token::hs256(&json!({"sub":"a","exp":now_unix() - 5}), "right"),
            AuthError::TokenExpired,
        ),
        (
            "no exp",
            token::hs256(&json!({"sub":"a"}), "right"),
            AuthError::InvalidToken,
        ),
        (
            "no sub",
            token::hs256(&json!({"exp":later()}), "right"),
            AuthError::InvalidToken,
        ),
        (
            "empty sub",
            token::hs256(&json!({"sub":"","exp":later()}), "right"),
            AuthError::InvalidToken,
        ),
        (
            "alg none, no signature",
            format!("{none_header}.{body}."),
            AuthError::InvalidToken,
        ),
        (
            "alg none, old signature",
            format!("{none_header}.{body}.{}", rest.split_once('.').unwrap().1),
            AuthError::InvalidToken,
        ),
        (
            "tampered body",
            format!(
                "{head}.{}.{}",
                URL_SAFE_NO_PAD.encode(br#"{"sub":"root","exp":9999999999}"#),
                rest.split_once('.').unwrap().1
            ),
            AuthError::InvalidToken,
        ),
        (
            // Absent means every room; an explicit null is refused rather
            // than read as "no restriction".
            "rooms null",
            token::hs256(&json!({"sub":"a","exp":later(),"rooms":null}), "right"),
            AuthError::InvalidToken,
        ),
        (
            "rooms not strings",
            token::hs256(&json!({"sub":"a","exp":later(),"rooms":[1, 2]}), "right"),
            AuthError::InvalidToken,
        ),
        (
            "not yet valid",
            token::hs256(&json!({"sub":"a","exp":later(),"nbf":later()}), "right"),
            AuthError::InvalidToken,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(auth.verify(&token), Err(want), "{name}");
    }
    assert_eq!(
        auth.authorize(None, &room("r")),
        Err(AuthError::MissingToken)
    );
}

#[test]
fn issuer_and_audience_checked_when_configured() {
    let mut cfg = hs("k");
    cfg.issuer = Some("https://issuer".into());
    cfg.audience = Some("switchboard".into());
    let auth = Authenticator::new(&cfg).unwrap();
    let ok = token::hs256(
        &json!({"sub":"a","exp":later(),"iss":"https://issuer","aud":"switchboard"}),
        "k",
    );
    assert!(auth.verify(&ok).is_ok());
    let cases = [
        (
            json!({"sub":"a","exp":later(),"iss":"https://issuer","aud":"other"}),
            AuthError::InvalidAudience,
        ),
        (
            json!({"sub":"a","exp":later(),"iss":"https://issuer"}),
            AuthError::InvalidAudience,
        ),
        (
            json!({"sub":"a","exp":later(),"iss":"https://evil","aud":"switchboard"}),
            AuthError::InvalidToken,
        ),
        (
            json!({"sub":"a","exp":later(),"aud":"switchboard"}),
            AuthError::InvalidToken,
        ),
    ];
    for (claims, want) in cases {
        assert_eq!(
            auth.verify(&token::hs256(&claims, "k")),
            Err(want),
            "{claims}"
        );
    }
    // Not configured: whatever iss/aud the token carries is accepted.
    let open = Authenticator::new(&hs("k")).unwrap();
    assert!(open
        .verify(&token::hs256(
            &json!({"sub":"a","exp":later(),"iss":"x","aud":"y"}),
            "k"
        ))
        .is_ok());
}

#[test]
fn rs256_accepts_rsa_and_refuses_hs_confusion() {
    let auth = Authenticator::new(&rs()).unwrap();
    let claims = json!({"sub":"a","exp":later()});
    let good = sign_rs(&claims);
    assert_eq!(auth.verify(&good).unwrap().user_id, "a");
    // The classic confusion attack: HS256 "signed" with the public key text.
    let confused = token::hs256(&claims, RSA_PUBLIC);
    assert_eq!(auth.verify(&confused), Err(AuthError::InvalidToken));
    // ES256 token for an RS256 server.
    let es = sign_es(&claims);
    assert_eq!(auth.verify(&es), Err(AuthError::InvalidToken));
}

#[test]
fn es256_accepts_ec_and_refuses_others() {
    let cfg = JwtConfig {
        algorithm: JwtAlgorithm::Es256,
        key: JwtKey::PublicKeyPem(EC_PUBLIC.into()),
        issuer: None,
        audience: None,
    };
    let auth = Authenticator::new(&cfg).unwrap();
    let claims = json!({"sub":"a","exp":later()});
    let good = sign_es(&claims);
    assert!(auth.verify(&good).is_ok());
    assert_eq!(
        auth.verify(&token::hs256(&claims, EC_PUBLIC)),
        Err(AuthError::InvalidToken)
    );
}

#[test]
fn hs256_server_refuses_rs256_tokens() {
    let auth = Authenticator::new(&hs("k")).unwrap();
    let claims = json!({"sub":"a","exp":later()});
    let rs = sign_rs(&claims);
    assert_eq!(auth.verify(&rs), Err(AuthError::InvalidToken));
}

#[test]
fn key_kind_must_match_algorithm() {
    let mut cfg = rs();
    cfg.key = JwtKey::Secret(Secret::new("k"));
    assert!(Authenticator::new(&cfg).is_err());
    cfg.algorithm = JwtAlgorithm::Es256;
    cfg.key = JwtKey::PublicKeyPem(RSA_PUBLIC.into());
    assert!(Authenticator::new(&cfg).is_err());
}

#[test]
fn dev_token_verifies_and_allows_every_room() {
    let cfg = hs("devsecret");
    let t = dev_token(
        &cfg,
        "dev",
        "dev",
        "*",
        now_unix(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let id = Authenticator::new(&cfg).unwrap().verify(&t).unwrap();
    assert_eq!(id.user_id, "dev");
    assert_eq!(id.rooms, RoomAccess::All);
    assert!(id.expires_at >= now_unix() + 86000);
}

#[test]
fn turn_credential_known_vector() {
    // printf '%s' "1600000000:alice" | openssl dgst -sha1 -hmac north -binary | base64
    let c = turn_credential(
        b"north",
        "alice",
        1_599_999_000,
        Duration::from_secs(1000),
        u64::MAX,
    );
    assert_eq!(c.username, "1600000000:alice");
    assert_eq!(c.credential, "gq98pTOhhHaAu0we9aV79kOVVv0=");
    assert_eq!(c.expires_at, 1_600_000_000);
}

#[test]
fn turn_credential_never_outlives_the_token() {
    let c = turn_credential(b"north", "alice", 1_000, Duration::from_secs(86400), 1_600);
    assert_eq!(c.expires_at, 1_600);
    assert!(c.username.starts_with("1600:"));
}

#[test]
fn overlong_sub_or_name_is_invalid_token() {
    let auth = Authenticator::new(&hs("s3cret")).unwrap();
    let at_limit = "é".repeat(MAX_IDENTITY_CHARS);
    let over = "é".repeat(MAX_IDENTITY_CHARS + 1);
    let ok = token::hs256(
        &json!({"sub": at_limit, "name": at_limit, "exp": later()}),
        "s3cret",
    );
    assert_eq!(auth.verify(&ok).unwrap().username, at_limit);
    for claims in [
        json!({"sub": over, "exp": later()}),
        json!({"sub": "alice", "name": over, "exp": later()}),
    ] {
        let t = token::hs256(&claims, "s3cret");
        assert_eq!(auth.verify(&t), Err(AuthError::InvalidToken));
    }
}

#[test]
fn refresh_needs_a_valid_token_of_the_same_user_for_the_room() {
    let auth = Authenticator::new(&hs("s3cret")).unwrap();
    let good = json!({"sub":"alice","exp":later() + 60,"rooms":["a"]});
    let id = auth
        .verify_refresh(&token::hs256(&good, "s3cret"), "alice", &room("a"))
        .unwrap();
    assert_eq!(id.expires_at, later() + 60);
    let cases: &[(String, ErrorCode)] = &[
        (
            token::hs256(
                &json!({"sub":"mallory","exp":later(),"rooms":["a"]}),
                "s3cret",
            ),
            ErrorCode::UserMismatch,
        ),
        (
            token::hs256(
                &json!({"sub":"alice","exp":later(),"rooms":["b"]}),
                "s3cret",
            ),
            ErrorCode::RoomForbidden,
        ),
        (
            token::hs256(&json!({"sub":"alice","exp":now_unix() - 1}), "s3cret"),
            ErrorCode::TokenExpired,
        ),
        (
            token::hs256(&json!({"sub":"alice","exp":later()}), "other-secret"),
            ErrorCode::InvalidToken,
        ),
        ("not-a-jwt".to_string(), ErrorCode::InvalidToken),
        (String::new(), ErrorCode::InvalidToken),
    ];
    for (token, want) in cases {
        let got = auth
            .verify_refresh(token, "alice", &room("a"))
            .map(|_| ())
            .map_err(RefreshError::error_code);
        assert_eq!(got, Err(*want), "token {token:?}");
    }
}

#[test]
fn public_key_check_names_each_mistake() {
    use JwtAlgorithm::{Es256, Rs256};
    let synthetic = |tag: &str| format!("-----BEGIN {tag}-----\nAAAA\n-----END {tag}-----\n");
    let wrong = |found, algorithm, expected| KeyProblem::WrongType {
        found,
        algorithm,
        expected,
    };
    let cases: Vec<(&str, JwtAlgorithm, String, Result<(), KeyProblem>)> = vec![
        ("rsa spki", Rs256, RSA_PUBLIC.into(), Ok(())),
        ("rsa pkcs1", Rs256, RSA_PUBLIC_PKCS1.into(), Ok(())),
        ("ec p-256", Es256, EC_PUBLIC.into(), Ok(())),
        (
            "rsa private",
            Rs256,
            RSA_PRIVATE.into(),
            Err(KeyProblem::PrivateKey),
        ),
        (
            "ec private",
            Es256,
            EC_PRIVATE.into(),
            Err(KeyProblem::PrivateKey),
        ),
        (
            "pkcs1 private label",
            Rs256,
            synthetic("RSA PRIVATE KEY"),
            Err(KeyProblem::PrivateKey),
        ),
        (
            "public next to private",
            Rs256,
            format!("{RSA_PUBLIC}{RSA_PRIVATE}"),
            Err(KeyProblem::PrivateKey),
        ),
        (
            "two public keys",
            Rs256,
            format!("{RSA_PUBLIC}{RSA_PUBLIC}"),
            Err(KeyProblem::SeveralBlocks(2)),
        ),
        (
            "certificate",
            Rs256,
            synthetic("CERTIFICATE"),
            Err(KeyProblem::Certificate),
        ),
        (
            "other block",
            Rs256,
            synthetic("DH PARAMETERS"),
            Err(KeyProblem::NotAPublicKey),
        ),
        (
            "not pem",
            Rs256,
            "ssh-rsa AAAA user@host".into(),
            Err(KeyProblem::NotPem),
        ),
        ("empty", Es256, String::new(), Err(KeyProblem::NotPem)),
        (
            "bad der",
            Rs256,
            synthetic("PUBLIC KEY"),
            Err(KeyProblem::Malformed),
        ),
        (
            "rsa 1024",
            Rs256,
            RSA_1024_PUBLIC.into(),
            Err(KeyProblem::WeakRsa { bits: 1024 }),
        ),
        (
            "ec for rs256",
            Rs256,
            EC_PUBLIC.into(),
            Err(wrong("an EC P-256", "RS256", "an RSA key")),
        ),
        (
            "rsa for es256",
            Es256,
            RSA_PUBLIC.into(),
            Err(wrong("an RSA", "ES256", "an EC P-256 key")),
        ),
        (
            "p-384 for es256",
            Es256,
            EC_P384_PUBLIC.into(),
            Err(wrong("an EC P-384", "ES256", "an EC P-256 key")),
        ),
    ];
    for (name, algorithm, pem, want) in cases {
        assert_eq!(check_public_key(algorithm, &pem), want, "{name}");
    }
}

#[test]
fn authenticator_refuses_keys_the_check_refuses() {
    let mut cfg = rs();
    cfg.key = JwtKey::PublicKeyPem(RSA_PRIVATE.into());
    let err = Authenticator::new(&cfg).unwrap_err();
    assert_eq!(err.problem, Some(KeyProblem::PrivateKey));
    cfg.key = JwtKey::PublicKeyPem(RSA_1024_PUBLIC.into());
    let err = Authenticator::new(&cfg).unwrap_err();
    assert_eq!(err.problem, Some(KeyProblem::WeakRsa { bits: 1024 }));
}

#[test]
fn key_problems_read_as_one_line() {
    assert_eq!(
        KeyProblem::WeakRsa { bits: 1024 }.to_string(),
        "is a 1024-bit RSA key; RS256 needs at least 2048 bits"
    );
    assert_eq!(
        KeyProblem::WrongType {
            found: "an EC P-384",
            algorithm: "ES256",
            expected: "an EC P-256 key"
        }
        .to_string(),
        "is an EC P-384 public key; ES256 needs an EC P-256 key"
    );
    assert!(!KeyProblem::PrivateKey.to_string().contains('\n'));
}

#[test]
fn the_room_admin_grant_is_read_and_only_a_boolean_counts() {
    let auth = Authenticator::new(&hs("s3cret")).unwrap();
    let verify = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "backend", "exp": later()});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        auth.verify(&token::hs256(&claims, "s3cret"))
    };
    assert!(!verify(json!({})).unwrap().room_admin, "no grants");
    assert!(
        verify(json!({"grants": {"room_admin": true}}))
            .unwrap()
            .room_admin
    );
    assert!(
        !verify(json!({"grants": {"room_admin": false}}))
            .unwrap()
            .room_admin
    );
    assert!(!verify(json!({"grants": {}})).unwrap().room_admin);
    // An unknown grant is ignored; a known one that is not a boolean is not guessed at.
    let other = verify(json!({"grants": {"future": true}})).unwrap();
    assert!(!other.room_admin);
    for bad in [
        json!({"grants": {"room_admin": "true"}}),
        json!({"grants": {"room_admin": 1}}),
        json!({"grants": ["room_admin"]}),
    ] {
        assert_eq!(verify(bad.clone()), Err(AuthError::InvalidToken), "{bad}");
    }
    // The grant is limited by the rooms claim like any token.
    let limited = verify(json!({"grants": {"room_admin": true}, "rooms": ["a"]})).unwrap();
    assert!(limited.room_admin && limited.may_join(&room("a")) && !limited.may_join(&room("b")));
}

#[test]
fn metadata_must_be_an_object_within_the_limit() {
    let auth = Authenticator::new(&hs("s3cret"))
        .unwrap()
        .with_max_metadata_bytes(16);
    let verify = |metadata: serde_json::Value| {
        auth.verify(&token::hs256(
            &json!({"sub": "u", "exp": later(), "metadata": metadata}),
            "s3cret",
        ))
    };
    // {"k":"12345678"} is 16 bytes as compact JSON.
    let fits = verify(json!({"k": "12345678"})).unwrap();
    assert_eq!(fits.metadata.unwrap()["k"], "12345678");
    assert_eq!(
        verify(json!({"k": "123456789"})),
        Err(AuthError::MetadataTooLarge)
    );
    assert_eq!(verify(json!(null)).unwrap().metadata, None);
    for bad in [json!([1]), json!("x"), json!(3)] {
        assert_eq!(verify(bad.clone()), Err(AuthError::InvalidToken), "{bad}");
    }
    // Without a limit (the token command) any size passes.
    let unlimited = Authenticator::new(&hs("s3cret")).unwrap();
    let big = json!({"sub": "u", "exp": later(), "metadata": {"k": "x".repeat(5000)}});
    assert!(unlimited.verify(&token::hs256(&big, "s3cret")).is_ok());
}
