//! `token` arguments (every error at once, exact messages), the claims, and
//! minted tokens checked by the server's own verifier.

use super::*;
use crate::auth::now_unix;
use crate::config::{JwtConfig, JwtKey, Secret};
use serde_json::json;

const SECRET: &str = "token-test-secret-0123456789abcdef";

fn args(sub: &str) -> TokenArgs {
    TokenArgs {
        sub: Some(sub.into()),
        ..TokenArgs::default()
    }
}

fn hs256() -> SigningConfig {
    SigningConfig {
        algorithm: JwtAlgorithm::Hs256,
        key: SigningKey::Secret(Secret::new(SECRET)),
        issuer: Some("backend".into()),
        audience: Some("switchboard".into()),
        verify: Some(JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Secret(Secret::new(SECRET)),
            issuer: Some("backend".into()),
            audience: Some("switchboard".into()),
        }),
    }
}

fn errors(a: &TokenArgs) -> Vec<String> {
    match request(a) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_fill_name_rooms_and_ttl() {
    let r = request(&args("alice")).unwrap();
    assert_eq!(
        r,
        TokenRequest {
            sub: "alice".into(),
            name: "alice".into(),
            rooms: vec!["*".into()],
            ttl: Duration::from_secs(3600),
            grants: vec![],
            metadata: None,
        }
    );
}

#[test]
fn every_bad_argument_is_reported_at_once() {
    let a = TokenArgs {
        sub: None,
        name: Some("  ".into()),
        rooms: vec!["demo".into(), "no/slash".into(), "".into()],
        ttl: Some("soon".into()),
        grants: vec!["room_admin".into(), "superuser".into()],
        metadata: Some("[1, 2]".into()),
    };
    assert_eq!(
        errors(&a),
        [
            "token error: --sub: required: the user id (`sub` claim)",
            "token error: --name: must not be empty (leave it out to use the user id)",
            "token error: --room: expected room ids of 1-64 characters A-Z, a-z, 0-9, '_' or '-' (or * for every room), got \"no/slash\", \"\"",
            "token error: --ttl: expected a lifetime like 90s, 15m, 1h or 7d (at most 365d), got \"soon\"",
            "token error: --grant: unknown grant \"superuser\" (known: room_admin)",
            "token error: --metadata: expected a JSON object like '{\"team\":\"blue\"}', got an array",
        ]
    );
}

#[test]
fn metadata_must_be_valid_json() {
    let a = TokenArgs {
        metadata: Some("{team: blue}".into()),
        ..args("alice")
    };
    let e = errors(&a);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("token error: --metadata: not valid JSON: key must be a string"),
        "{e:?}"
    );
}

#[test]
fn identities_longer_than_the_server_accepts_are_refused() {
    let long = "é".repeat(MAX_IDENTITY_CHARS + 1);
    let a = TokenArgs {
        sub: Some(long.clone()),
        name: Some(long),
        ..TokenArgs::default()
    };
    let e = errors(&a);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("--sub: longer than 256 characters"), "{e:?}");
    assert!(e[1].contains("--name: longer than 256 characters"), "{e:?}");
    let at_limit = "é".repeat(MAX_IDENTITY_CHARS);
    assert!(request(&args(&at_limit)).is_ok());
}

#[test]
fn ttl_forms_and_bounds() {
    let cases = [
        ("90", Some(90)),
        ("90s", Some(90)),
        ("15m", Some(900)),
        ("1h", Some(3600)),
        ("7d", Some(7 * 86400)),
        ("365d", Some(365 * 86400)),
        ("366d", None),
        ("0s", None),
        ("1w", None),
        ("-1h", None),
        ("1.5h", None),
        ("h", None),
        ("99999999999999999999d", None),
    ];
    for (text, secs) in cases {
        assert_eq!(parse_ttl(text), secs.map(Duration::from_secs), "{text:?}");
    }
}

#[test]
fn claims_carry_grants_metadata_iss_and_aud() {
    let a = TokenArgs {
        name: Some("Alice".into()),
        rooms: vec!["demo".into(), "lobby".into()],
        ttl: Some("2h".into()),
        grants: vec!["room_admin".into(), "room_admin".into()],
        metadata: Some(r#"{"team": "blue", "level": 3}"#.into()),
        ..args("alice")
    };
    let req = request(&a).unwrap();
    let signing = hs256();
    let value = serde_json::to_value(claims(&req, &signing, 1_000)).unwrap();
    assert_eq!(
        value,
        json!({
            "sub": "alice",
            "name": "Alice",
            "rooms": ["demo", "lobby"],
            "iat": 1_000,
            "exp": 1_000 + 7200,
            "grants": {"room_admin": true},
            "metadata": {"team": "blue", "level": 3},
            "iss": "backend",
            "aud": "switchboard",
        })
    );
    // No grants, metadata, iss or aud: the claims are left out.
    let req = request(&args("bob")).unwrap();
    let plain = SigningConfig {
        issuer: None,
        audience: None,
        ..hs256()
    };
    let value = serde_json::to_value(claims(&req, &plain, 5)).unwrap();
    assert_eq!(
        value,
        json!({"sub": "bob", "name": "bob", "rooms": ["*"], "iat": 5, "exp": 3605})
    );
}

#[test]
fn minted_hs256_token_passes_the_servers_verifier() {
    let req = request(&TokenArgs {
        rooms: vec!["demo".into()],
        ..args("alice")
    })
    .unwrap();
    let signing = hs256();
    let token = mint(&req, &signing, now_unix()).unwrap();
    let verify = signing.verify.as_ref().unwrap();
    let id = Authenticator::new(verify).unwrap().verify(&token).unwrap();
    assert_eq!(
        (id.user_id.as_str(), id.username.as_str()),
        ("alice", "alice")
    );
    assert!(id.may_join(&RoomId::parse("demo").unwrap()));
    assert!(!id.may_join(&RoomId::parse("other").unwrap()));
}

fn rs256(private: &str, public: &str) -> SigningConfig {
    SigningConfig {
        algorithm: JwtAlgorithm::Rs256,
        key: SigningKey::PrivateKeyPem(Secret::new(private)),
        issuer: None,
        audience: None,
        verify: Some(JwtConfig {
            algorithm: JwtAlgorithm::Rs256,
            key: JwtKey::PublicKeyPem(public.into()),
            issuer: None,
            audience: None,
        }),
    }
}

#[test]
fn rs256_tokens_verify_and_a_foreign_public_key_is_caught() {
    let private = include_str!("../tests/keys/rsa_private.pem");
    let public = include_str!("../tests/keys/rsa_public.pem");
    let req = request(&args("alice")).unwrap();
    let token = mint(&req, &rs256(private, public), now_unix()).unwrap();
    assert_eq!(token.split('.').count(), 3);
    // A public key of another pair: the token would be refused, so it is not printed.
    let other = include_str!("../../tests/fixtures/test-only-rsa-public.pem");
    match mint(&req, &rs256(private, other), now_unix()) {
        Err(MintError::Refused { reason }) => assert_eq!(reason, "invalid_token"),
        other => panic!("{other:?}"),
    }
}
