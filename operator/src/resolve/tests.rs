use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::core::ObjectMeta;

use super::*;
use crate::api::{
    AuthSpec, ExternalRedisSpec, JwtAlgorithm, RedisSpec, SecretKeyRef, SignalingClusterSpec,
};

use crate::test_support::demo_cluster as cluster;

fn secret(name: &str, pairs: &[(&str, &[u8])]) -> (String, Secret) {
    let data = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
        .collect();
    (
        name.to_owned(),
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        },
    )
}

/// A generated-looking HS256 key (the server wants at least 32 bytes).
const JWT: &str = "jwt-secret-0123456789abcdef012345";

fn generated() -> BTreeMap<String, Secret> {
    BTreeMap::from([
        secret("demo-jwt", &[("secret", JWT.as_bytes())]),
        secret("demo-turn", &[("secret", b"turn-secret")]),
        secret("demo-redis-auth", &[("password", b"p@ss/word")]),
        secret(
            "demo-resume",
            &[("secret", GENERATED_RESUME_KEY.as_bytes())],
        ),
    ])
}

/// What the runtime generates into `demo-resume` (RS256/ES256 with resume on).
const GENERATED_RESUME_KEY: &str = "generated-resume-key-0123456789abcdef";

fn sref(name: &str, key: Option<&str>) -> SecretKeyRef {
    SecretKeyRef {
        name: name.into(),
        key: key.map(str::to_owned),
    }
}

fn with_turn(mut spec: SignalingClusterSpec, r: Option<SecretKeyRef>) -> SignalingClusterSpec {
    spec.ice.turn_urls = vec!["turns:turn.example.com:5349".into()];
    spec.ice.turn_secret_ref = r;
    spec
}

#[test]
fn bare_spec_uses_the_generated_secrets() {
    let r = resolve(&cluster(SignalingClusterSpec::default()), &generated()).unwrap();
    assert_eq!(r.jwt, JwtKey::Hs256Secret(JWT.into()));
    // No TURN URLs: no TURN secret even though one exists.
    assert_eq!(r.turn_secret, None);
    // The password is percent-encoded into the URL of the managed Redis Service.
    assert_eq!(r.redis_url, "redis://:p%40ss%2Fword@demo-redis.x.svc:6379");
}

#[test]
fn turn_urls_without_a_ref_use_the_generated_turn_secret() {
    let sc = cluster(with_turn(SignalingClusterSpec::default(), None));
    let r = resolve(&sc, &generated()).unwrap();
    assert_eq!(r.turn_secret.as_deref(), Some("turn-secret"));
}

#[test]
fn user_turn_secret_with_default_and_explicit_key() {
    let mut secrets = generated();
    secrets.extend([secret("turn", &[("secret", b"a"), ("other", b"b")])]);
    let sc = cluster(with_turn(
        SignalingClusterSpec::default(),
        Some(sref("turn", None)),
    ));
    assert_eq!(
        resolve(&sc, &secrets).unwrap().turn_secret.as_deref(),
        Some("a")
    );
    let sc = cluster(with_turn(
        SignalingClusterSpec::default(),
        Some(sref("turn", Some("other"))),
    ));
    assert_eq!(
        resolve(&sc, &secrets).unwrap().turn_secret.as_deref(),
        Some("b")
    );
}

#[test]
fn missing_turn_key_names_secret_namespace_and_key() {
    let mut secrets = generated();
    secrets.extend([secret("turn", &[("other", b"b")])]);
    let sc = cluster(with_turn(
        SignalingClusterSpec::default(),
        Some(sref("turn", None)),
    ));
    let err = resolve(&sc, &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretKeyMissing);
    assert_eq!(err.reason.as_str(), "SecretKeyMissing");
    assert_eq!(
        err.message,
        r#"secret "turn" in namespace "x" has no key "secret" (referenced by ice.turnSecretRef)"#
    );
}

#[test]
fn missing_secret_is_secret_not_found() {
    let sc = cluster(with_turn(
        SignalingClusterSpec::default(),
        Some(sref("nope", None)),
    ));
    let err = resolve(&sc, &generated()).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretNotFound);
    assert_eq!(
        err.message,
        r#"secret "nope" in namespace "x" not found (referenced by ice.turnSecretRef)"#
    );
}

#[test]
fn missing_generated_secret_is_reported_too() {
    let mut secrets = generated();
    secrets.remove("demo-jwt");
    let err = resolve(&cluster(SignalingClusterSpec::default()), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretNotFound);
    assert!(
        err.message.contains(r#"secret "demo-jwt""#),
        "{}",
        err.message
    );
}

#[test]
fn empty_and_non_utf8_values_are_invalid() {
    for value in [&b""[..], &b"  \n"[..], &[0xff, 0xfe][..]] {
        let mut secrets = generated();
        secrets.extend([secret("demo-jwt", &[("secret", value)])]);
        let err = resolve(&cluster(SignalingClusterSpec::default()), &secrets).unwrap_err();
        assert_eq!(
            err.reason,
            ConfigErrorReason::SecretValueInvalid,
            "{value:?}"
        );
    }
}

#[test]
fn string_data_is_read_when_data_lacks_the_key() {
    let mut secrets = generated();
    let (_, mut s) = secret("demo-jwt", &[]);
    s.string_data = Some(BTreeMap::from([(
        "secret".to_owned(),
        "from-string-data-0123456789abcdef".to_owned(),
    )]));
    secrets.insert("demo-jwt".into(), s);
    let r = resolve(&cluster(SignalingClusterSpec::default()), &secrets).unwrap();
    assert_eq!(
        r.jwt,
        JwtKey::Hs256Secret("from-string-data-0123456789abcdef".into())
    );
}

#[test]
fn hs256_with_user_secret_ignores_the_generated_one() {
    let mut secrets = generated();
    secrets.extend([secret(
        "mine",
        &[("key", b"user-secret-0123456789abcdef01234")],
    )]);
    let spec = SignalingClusterSpec {
        auth: AuthSpec {
            secret_ref: Some(sref("mine", Some("key"))),
            ..AuthSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let r = resolve(&cluster(spec), &secrets).unwrap();
    assert_eq!(
        r.jwt,
        JwtKey::Hs256Secret("user-secret-0123456789abcdef01234".into())
    );
}

const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";

#[test]
fn rs256_and_es256_read_a_pem_public_key() {
    for alg in [JwtAlgorithm::RS256, JwtAlgorithm::ES256] {
        let mut secrets = generated();
        secrets.extend([secret("pub", &[("public.pem", PEM.as_bytes())])]);
        let spec = SignalingClusterSpec {
            auth: AuthSpec {
                algorithm: alg,
                secret_ref: Some(sref("pub", None)),
                ..AuthSpec::default()
            },
            ..SignalingClusterSpec::default()
        };
        let r = resolve(&cluster(spec), &secrets).unwrap();
        assert_eq!(r.jwt, JwtKey::PublicKeyPem(PEM.into()));
    }
}

#[test]
fn rs256_rejects_a_non_pem_value_and_a_missing_ref() {
    let mut secrets = generated();
    secrets.extend([secret("pub", &[("public.pem", b"not a key")])]);
    let mut spec = SignalingClusterSpec {
        auth: AuthSpec {
            algorithm: JwtAlgorithm::RS256,
            secret_ref: Some(sref("pub", None)),
            ..AuthSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let err = resolve(&cluster(spec.clone()), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert!(err.message.contains("RS256"), "{}", err.message);

    spec.auth.secret_ref = None;
    let err = resolve(&cluster(spec), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::InvalidSpec);
}

fn external(r: Option<SecretKeyRef>) -> SignalingClusterSpec {
    SignalingClusterSpec {
        redis: RedisSpec {
            managed: None,
            external: Some(ExternalRedisSpec {
                secret_ref: r,
                cluster: false,
            }),
            ..RedisSpec::default()
        },
        ..SignalingClusterSpec::default()
    }
}

#[test]
fn external_redis_url_is_taken_verbatim_and_trimmed() {
    let mut secrets = generated();
    secrets.remove("demo-redis-auth");
    secrets.extend([secret(
        "redis",
        &[("url", b"rediss://:pw@redis.example:6380/0\n")],
    )]);
    let r = resolve(&cluster(external(Some(sref("redis", None)))), &secrets).unwrap();
    assert_eq!(r.redis_url, "rediss://:pw@redis.example:6380/0");
}

#[test]
fn an_external_redis_cluster_is_named_by_its_seed_urls() {
    let mut secrets = generated();
    secrets.remove("demo-redis-auth");
    secrets.extend([secret(
        "seeds",
        &[(
            "url",
            b"redis://:pw@r-0.redis:6379, redis://:pw@r-1.redis:6379\n",
        )],
    )]);
    let mut spec = external(Some(sref("seeds", None)));
    if let Some(ext) = spec.redis.external.as_mut() {
        ext.cluster = true;
    }
    let r = resolve(&cluster(spec.clone()), &secrets).unwrap();
    assert!(r.redis_cluster);
    assert_eq!(
        r.redis_url,
        "redis://:pw@r-0.redis:6379,redis://:pw@r-1.redis:6379"
    );
    // One bad seed spoils the list, and is not echoed.
    secrets.extend([secret(
        "seeds",
        &[("url", b"redis://:pw@r-0:6379,http://hunter2@r-1")],
    )]);
    let err = resolve(&cluster(spec), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert!(!err.message.contains("hunter2"), "{}", err.message);
    assert!(err.message.contains("Redis Cluster"), "{}", err.message);
}

#[test]
fn external_redis_value_that_is_not_a_url_is_invalid_and_not_echoed() {
    let mut secrets = generated();
    secrets.extend([secret("redis", &[("url", b"http://hunter2@x")])]);
    let err = resolve(&cluster(external(Some(sref("redis", None)))), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert!(!err.message.contains("hunter2"), "{}", err.message);
    assert_eq!(
        err.message,
        r#"secret "redis" key "url" in namespace "x" does not hold a redis:// or rediss:// URL"#
    );
}

#[test]
fn external_redis_url_without_host_or_with_spaces_is_invalid() {
    for bad in [&b"redis://"[..], b"rediss://  ", b"redis://a b:6379"] {
        let mut secrets = generated();
        secrets.extend([secret("redis", &[("url", bad)])]);
        let err = resolve(&cluster(external(Some(sref("redis", None)))), &secrets).unwrap_err();
        assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid, "{bad:?}");
    }
}

#[test]
fn inconsistent_redis_spec_is_invalid_spec() {
    let err = resolve(&cluster(external(None)), &generated()).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::InvalidSpec);
    let mut spec = external(None);
    spec.redis.external = None;
    let err = resolve(&cluster(spec), &generated()).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::InvalidSpec);
}

#[test]
fn referenced_secret_names_cover_refs_and_generated_ones() {
    let names = referenced_secret_names(&cluster(SignalingClusterSpec::default()));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["demo-jwt", "demo-redis-auth"]
    );
    let mut spec = with_turn(
        external(Some(sref("redis", None))),
        Some(sref("turn", None)),
    );
    spec.auth.secret_ref = Some(sref("jwt", None));
    let names = referenced_secret_names(&cluster(spec));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["jwt", "redis", "turn"]
    );
}

#[test]
fn debug_output_redacts_secrets() {
    let r = resolve(&cluster(SignalingClusterSpec::default()), &generated()).unwrap();
    let shown = format!("{r:?}");
    assert!(!shown.contains(JWT) && !shown.contains("p%40ss"), "{shown}");
}

#[test]
fn hs256_secret_shorter_than_32_bytes_is_refused_before_the_server_would() {
    let mut secrets = generated();
    // 31 bytes plus whitespace the server trims.
    secrets.extend([secret(
        "mine",
        &[("secret", b"0123456789012345678901234567890\n")],
    )]);
    let spec = SignalingClusterSpec {
        auth: AuthSpec {
            secret_ref: Some(sref("mine", None)),
            ..AuthSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let err = resolve(&cluster(spec.clone()), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert_eq!(
        err.message,
        r#"secret "mine" key "secret" in namespace "x" (referenced by auth.secretRef) is shorter than 32 bytes, too short for an HS256 key"#
    );
    // Exactly 32 bytes is enough.
    secrets.extend([secret(
        "mine",
        &[("secret", b"01234567890123456789012345678901")],
    )]);
    assert!(resolve(&cluster(spec), &secrets).is_ok());
}

#[test]
fn check_spec_reports_every_violation_at_once() {
    let mut spec = SignalingClusterSpec::default();
    spec.ice.turn_urls = vec!["stun:x".into()];
    spec.ingress.enabled = true;
    spec.redis.key_prefix = "{room}".into();
    let err = check_spec(&spec).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::InvalidSpec);
    assert_eq!(
        err.message,
        [
            crate::api::MSG_TURN_URL_SCHEME,
            crate::api::MSG_INGRESS_HOST,
            MSG_KEY_PREFIX
        ]
        .join("; ")
    );
    // resolve() stops at the spec check and reports the same list.
    let sc = cluster(spec);
    assert_eq!(resolve(&sc, &generated()).unwrap_err(), err);
    assert_eq!(check_spec(&SignalingClusterSpec::default()), Ok(()));
}

#[test]
fn webhook_secrets_are_read_in_order_and_a_bad_one_is_refused_without_echoing_it() {
    use crate::api::{WebhookEndpointSpec, WebhooksSpec};
    let endpoint = |secret: &str| WebhookEndpointSpec {
        url: "https://backend.example/hooks".into(),
        name: None,
        secret_ref: sref(secret, None),
        events: Vec::new(),
    };
    let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut secrets = generated();
    secrets.extend([
        secret("hooks", &[("secret", format!("{good}\n").as_bytes())]),
        secret("plain", &[("secret", b"not-a-webhook-secret")]),
    ]);
    let spec = SignalingClusterSpec {
        webhooks: WebhooksSpec {
            endpoints: vec![endpoint("hooks")],
            ..WebhooksSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let sc = cluster(spec.clone());
    assert_eq!(
        resolve(&sc, &secrets).unwrap().webhook_secrets,
        vec![good.to_owned()]
    );
    assert!(referenced_secret_names(&sc).contains("hooks"));
    let bad = SignalingClusterSpec {
        webhooks: WebhooksSpec {
            endpoints: vec![endpoint("hooks"), endpoint("plain")],
            ..WebhooksSpec::default()
        },
        ..spec
    };
    let err = resolve(&cluster(bad), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert!(
        err.message.contains("webhooks.endpoints[1].secretRef"),
        "{}",
        err.message
    );
    assert!(
        !err.message.contains("not-a-webhook-secret"),
        "{}",
        err.message
    );
}

/// An RS256 spec whose public key is in Secret `pub`, with `resume` as given.
fn rs256_with(resume: crate::api::ResumeSpec) -> SignalingClusterSpec {
    SignalingClusterSpec {
        auth: AuthSpec {
            algorithm: JwtAlgorithm::RS256,
            secret_ref: Some(sref("pub", None)),
            ..AuthSpec::default()
        },
        resume,
        ..SignalingClusterSpec::default()
    }
}

const RESUME_KEY: &str = "resume-key-0123456789abcdef0123456789";

#[test]
fn the_resume_key_is_shared_by_every_replica_whatever_the_jwt_key() {
    use crate::api::ResumeSpec;
    let mut secrets = generated();
    secrets.extend([
        secret("pub", &[("public.pem", PEM.as_bytes())]),
        secret("mine", &[("rk", format!("{RESUME_KEY}\n").as_bytes())]),
    ]);
    // HS256 without a reference: the servers derive it from the JWT key; nothing rendered.
    let r = resolve(&cluster(SignalingClusterSpec::default()), &secrets).unwrap();
    assert_eq!(r.resume_secret, None);
    // A public JWT key gives the servers nothing to derive from: the generated key.
    let sc = cluster(rs256_with(ResumeSpec::default()));
    assert_eq!(
        resolve(&sc, &secrets).unwrap().resume_secret.as_deref(),
        Some(GENERATED_RESUME_KEY)
    );
    assert!(referenced_secret_names(&sc).contains("demo-resume"));
    // A reference wins over both, trimmed, with its key.
    let mine = ResumeSpec {
        secret_ref: Some(sref("mine", Some("rk"))),
        ..ResumeSpec::default()
    };
    for spec in [
        rs256_with(mine.clone()),
        SignalingClusterSpec {
            resume: mine.clone(),
            ..SignalingClusterSpec::default()
        },
    ] {
        let sc = cluster(spec);
        let r = resolve(&sc, &secrets).unwrap();
        assert_eq!(r.resume_secret.as_deref(), Some(RESUME_KEY));
        let names = referenced_secret_names(&sc);
        assert!(names.contains("mine") && !names.contains("demo-resume"));
    }
    // Resume off: no key at all, none generated or read.
    let off = ResumeSpec {
        grace_seconds: Some(0),
        ..ResumeSpec::default()
    };
    let sc = cluster(rs256_with(off));
    assert_eq!(resolve(&sc, &secrets).unwrap().resume_secret, None);
    assert!(!referenced_secret_names(&sc).contains("demo-resume"));
}

#[test]
fn a_missing_or_short_resume_key_is_reported_without_echoing_it() {
    use crate::api::ResumeSpec;
    let mut secrets = generated();
    secrets.remove("demo-resume");
    secrets.extend([
        secret("pub", &[("public.pem", PEM.as_bytes())]),
        // 31 bytes plus a newline.
        secret("short", &[("secret", b"0123456789012345678901234567890\n")]),
    ]);
    let err = resolve(&cluster(rs256_with(ResumeSpec::default())), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretNotFound);
    assert!(
        err.message.contains("\"demo-resume\"") && err.message.contains("generated resume key"),
        "{}",
        err.message
    );
    let short = ResumeSpec {
        secret_ref: Some(sref("short", None)),
        ..ResumeSpec::default()
    };
    let err = resolve(&cluster(rs256_with(short)), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretValueInvalid);
    assert_eq!(
        err.message,
        r#"secret "short" key "secret" in namespace "x" (referenced by resume.secretRef) is shorter than 32 bytes, too short for a resume token key"#
    );
    let missing_key = ResumeSpec {
        secret_ref: Some(sref("short", Some("other"))),
        ..ResumeSpec::default()
    };
    let err = resolve(&cluster(rs256_with(missing_key)), &secrets).unwrap_err();
    assert_eq!(err.reason, ConfigErrorReason::SecretKeyMissing);
    assert!(err.message.contains("resume.secretRef"), "{}", err.message);
}

#[test]
fn resume_values_out_of_range_are_invalid_spec() {
    use crate::api::{self, ResumeSpec};
    let resume = |grace: Option<i64>, messages: Option<i64>, bytes: Option<i64>| ResumeSpec {
        grace_seconds: grace,
        inbox_messages: messages,
        inbox_bytes: bytes,
        secret_ref: None,
    };
    let with_ref = ResumeSpec {
        secret_ref: Some(sref("mine", None)),
        ..resume(Some(0), None, None)
    };
    let cases: [(ResumeSpec, &[&str]); 9] = [
        (resume(Some(0), Some(1), Some(1024)), &[]),
        (resume(Some(3600), Some(65536), Some(67108864)), &[]),
        (resume(Some(-1), None, None), &[MSG_RESUME_GRACE]),
        (resume(Some(3601), None, None), &[MSG_RESUME_GRACE]),
        (resume(None, Some(0), None), &[MSG_RESUME_INBOX_MESSAGES]),
        (
            resume(None, Some(65537), None),
            &[MSG_RESUME_INBOX_MESSAGES],
        ),
        (resume(None, None, Some(1023)), &[MSG_RESUME_INBOX_BYTES]),
        (
            resume(Some(-5), None, Some(67108865)),
            &[MSG_RESUME_GRACE, MSG_RESUME_INBOX_BYTES],
        ),
        (with_ref, &[api::MSG_RESUME_SECRET_WITHOUT_RESUME]),
    ];
    for (resume, expected) in cases {
        let spec = SignalingClusterSpec {
            resume: resume.clone(),
            ..SignalingClusterSpec::default()
        };
        let got = check_spec(&spec);
        if expected.is_empty() {
            assert_eq!(got, Ok(()), "{resume:?}");
        } else {
            let err = got.unwrap_err();
            assert_eq!(err.reason, ConfigErrorReason::InvalidSpec, "{resume:?}");
            assert_eq!(err.message, expected.join("; "), "{resume:?}");
        }
    }
    // The messages state the bounds the schema enforces.
    assert!(MSG_RESUME_GRACE.contains(&api::RESUME_GRACE_MAX.to_string()));
    assert!(MSG_RESUME_INBOX_MESSAGES.contains(&api::RESUME_INBOX_MESSAGES_MAX.to_string()));
    assert!(MSG_RESUME_INBOX_BYTES.contains(&api::RESUME_INBOX_BYTES_MIN.to_string()));
    assert!(MSG_RESUME_INBOX_BYTES.contains(&api::RESUME_INBOX_BYTES_MAX.to_string()));
}

#[test]
fn debug_output_redacts_the_resume_key() {
    let mut secrets = generated();
    secrets.extend([secret("mine", &[("secret", RESUME_KEY.as_bytes())])]);
    let spec = SignalingClusterSpec {
        resume: crate::api::ResumeSpec {
            secret_ref: Some(sref("mine", None)),
            ..crate::api::ResumeSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let r = resolve(&cluster(spec), &secrets).unwrap();
    assert!(r.resume_secret.is_some());
    let shown = format!("{r:?}");
    assert!(!shown.contains(RESUME_KEY), "{shown}");
}
