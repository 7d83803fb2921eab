use super::*;
use crate::api::{
    AuthSpec, BundlePolicy, IceTransportPolicy, JwtAlgorithm, RtcpMuxPolicy, SignalingClusterSpec,
};
use crate::resolve::{JwtKey, Resolved};

use crate::test_support::demo_cluster as cluster;

fn resolved() -> Resolved {
    Resolved {
        jwt: JwtKey::Hs256Secret("s3cret".into()),
        turn_secret: None,
        redis_url: "redis://:pw@demo-redis.x.svc:6379".into(),
        redis_cluster: false,
        webhook_secrets: Vec::new(),
        resume_secret: None,
    }
}

#[test]
fn webhooks_render_each_endpoint_with_its_secret_inline() {
    use crate::api::{SecretKeyRef, WebhookEndpointSpec, WebhookEventType, WebhooksSpec};
    let spec = SignalingClusterSpec {
        webhooks: WebhooksSpec {
            endpoints: vec![
                WebhookEndpointSpec {
                    url: "https://backend.example/hooks".into(),
                    name: None,
                    secret_ref: SecretKeyRef {
                        name: "hooks".into(),
                        key: None,
                    },
                    events: Vec::new(),
                },
                WebhookEndpointSpec {
                    url: "https://billing.example/rooms".into(),
                    name: Some("billing".into()),
                    secret_ref: SecretKeyRef {
                        name: "billing".into(),
                        key: Some("whsec".into()),
                    },
                    events: vec![
                        WebhookEventType::RoomStarted,
                        WebhookEventType::RoomFinished,
                    ],
                },
            ],
            timeout_ms: Some(5000),
            retry_horizon_seconds: None,
        },
        ..SignalingClusterSpec::default()
    };
    let mut r = resolved();
    r.webhook_secrets = vec!["whsec_one".into(), "whsec_two".into()];
    let out = render(&cluster(spec), &r).unwrap();
    let tail = out
        .yaml
        .split("webhooks:\n")
        .nth(1)
        .expect("a webhooks section");
    assert_eq!(
        tail,
        "  endpoints:\n  - url: https://backend.example/hooks\n    secret: whsec_one\n  - url: https://billing.example/rooms\n    name: billing\n    secret: whsec_two\n    events:\n    - room_started\n    - room_finished\n  timeout_ms: 5000\n"
    );
    let bare = render(&cluster(SignalingClusterSpec::default()), &resolved()).unwrap();
    assert!(!bare.yaml.contains("webhooks"));
}

#[test]
fn resume_renders_what_the_spec_sets_and_the_shared_key() {
    use crate::api::ResumeSpec;
    let spec = SignalingClusterSpec {
        resume: ResumeSpec {
            grace_seconds: Some(45),
            inbox_messages: Some(1024),
            inbox_bytes: Some(4194304),
            secret_ref: None,
        },
        ..SignalingClusterSpec::default()
    };
    let mut r = resolved();
    r.resume_secret = Some("shared-resume-key".into());
    let out = render(&cluster(spec.clone()), &r).unwrap();
    let tail = out
        .yaml
        .split("\nresume:\n")
        .nth(1)
        .expect("a resume section");
    assert_eq!(
        tail,
        "  grace_secs: 45\n  inbox_messages: 1024\n  inbox_bytes: 4194304\n  secret: shared-resume-key\n"
    );
    // Without a key to share (HS256: the servers derive it), only the settings.
    let derived = render(&cluster(spec), &resolved()).unwrap();
    assert!(
        derived.yaml.ends_with(
            "\nresume:\n  grace_secs: 45\n  inbox_messages: 1024\n  inbox_bytes: 4194304\n"
        ),
        "{}",
        derived.yaml
    );
    assert_ne!(derived.hash, out.hash, "a new key rolls the pods");
    // Only the key (RS256 with every default): a section of one line.
    let out = render(&cluster(SignalingClusterSpec::default()), &r).unwrap();
    assert!(
        out.yaml
            .ends_with("\nresume:\n  secret: shared-resume-key\n"),
        "{}",
        out.yaml
    );
    // Resume off renders 0, which the server reads as "no resume".
    let off = SignalingClusterSpec {
        resume: ResumeSpec {
            grace_seconds: Some(0),
            ..ResumeSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let out = render(&cluster(off), &resolved()).unwrap();
    assert!(
        out.yaml.ends_with("\nresume:\n  grace_secs: 0\n"),
        "{}",
        out.yaml
    );
    // Nothing set, nothing to share: no section, so a bare spec renders what it did before.
    let bare = render(&cluster(SignalingClusterSpec::default()), &resolved()).unwrap();
    assert!(!bare.yaml.contains("resume"));
}

#[test]
fn bare_spec_renders_exactly_this_file() {
    let out = render(&cluster(SignalingClusterSpec::default()), &resolved()).unwrap();
    assert_eq!(
        out.yaml,
        "\
# Rendered by switchboard-operator from a SignalingCluster; edits are overwritten.
listen: 0.0.0.0:8080
log_format: json
jwt:
  algorithm: HS256
  secret: s3cret
ice:
  stun_urls:
  - stun:stun.l.google.com:19302
  turn_credential_ttl_secs: 86400
  ice_transport_policy: all
  bundle_policy: balanced
  rtcp_mux_policy: require
rooms:
  max_participants: 50
  presence_ttl_secs: 30
redis:
  url: redis://:pw@demo-redis.x.svc:6379
  key_prefix: switchboard
connections:
  trusted_proxies:
  - 10.0.0.0/8
  - 172.16.0.0/12
  - 192.168.0.0/16
  - 100.64.0.0/10
  - fc00::/7
"
    );
    assert!(out.extra_files.is_empty());
}

#[test]
fn every_setting_lands_under_its_config_table_key() {
    let mut spec = SignalingClusterSpec::default();
    spec.auth.issuer = Some("https://issuer.example".into());
    spec.auth.audience = Some("switchboard".into());
    spec.ice.stun_urls = vec!["stun:a:3478".into(), "stuns:b:5349".into()];
    spec.ice.turn_urls = vec!["turn:t:3478?transport=udp".into()];
    spec.ice.credential_ttl_seconds = 3600;
    spec.ice.ice_transport_policy = IceTransportPolicy::Relay;
    spec.ice.bundle_policy = BundlePolicy::MaxBundle;
    spec.ice.rtcp_mux_policy = RtcpMuxPolicy::Negotiate;
    spec.rooms.max_participants = 8;
    spec.rooms.presence_ttl_seconds = 45;
    spec.allowed_origins = vec!["https://app.example.com".into()];
    spec.redis.key_prefix = "team-a".into();
    spec.limits = LimitsSpec {
        max_message_bytes: Some(4096),
        rate_per_second: Some(80),
        rate_burst: Some(300),
        rate_bytes_per_second: Some(1_048_576),
        rate_bytes_burst: Some(2_097_152),
        max_json_depth: Some(16),
        max_metadata_bytes: Some(2048),
        max_session_seconds: Some(86_400),
        outbound_queue_messages: Some(512),
        outbound_queue_bytes: Some(2_097_152),
        write_buffer_bytes: Some(524_288),
        ping_interval_seconds: Some(15),
        ping_timeout_seconds: Some(10),
        close_timeout_ms: Some(2000),
        max_user_connections_per_room: Some(3),
        max_user_connections_per_pod: Some(0),
        max_connections: Some(5000),
        max_connections_per_ip: Some(50),
        header_read_timeout_ms: Some(5000),
        max_header_bytes: Some(8192),
        body_read_timeout_ms: Some(4000),
    };
    let mut r = resolved();
    r.turn_secret = Some("turn: secret with # and 'quotes'".into());
    let out = render(&cluster(spec), &r).unwrap();

    // Parse it back the way the server would and check each key of BRIEF.md's table.
    let v: serde_yaml::Value = serde_yaml::from_str(&out.yaml).unwrap();
    let get = |path: &str| {
        path.split('.')
            .try_fold(&v, |node, k| node.get(k))
            .unwrap_or_else(|| panic!("missing {path} in\n{}", out.yaml))
            .clone()
    };
    let s = |x: &str| serde_yaml::Value::String(x.into());
    assert_eq!(get("listen"), s("0.0.0.0:8080"));
    assert_eq!(get("log_format"), s("json"));
    assert_eq!(get("jwt.algorithm"), s("HS256"));
    assert_eq!(get("jwt.secret"), s("s3cret"));
    assert_eq!(get("jwt.issuer"), s("https://issuer.example"));
    assert_eq!(get("jwt.audience"), s("switchboard"));
    assert_eq!(
        get("ice.stun_urls"),
        serde_yaml::Value::Sequence(vec![s("stun:a:3478"), s("stuns:b:5349")])
    );
    assert_eq!(
        get("ice.turn_urls"),
        serde_yaml::Value::Sequence(vec![s("turn:t:3478?transport=udp")])
    );
    assert_eq!(
        get("ice.turn_secret"),
        s("turn: secret with # and 'quotes'")
    );
    assert_eq!(
        get("ice.turn_credential_ttl_secs"),
        serde_yaml::Value::from(3600)
    );
    assert_eq!(get("ice.ice_transport_policy"), s("relay"));
    assert_eq!(get("ice.bundle_policy"), s("max-bundle"));
    assert_eq!(get("ice.rtcp_mux_policy"), s("negotiate"));
    assert_eq!(get("rooms.max_participants"), serde_yaml::Value::from(8));
    assert_eq!(get("rooms.presence_ttl_secs"), serde_yaml::Value::from(45));
    assert_eq!(
        get("allowed_origins"),
        serde_yaml::Value::Sequence(vec![s("https://app.example.com")])
    );
    assert_eq!(get("redis.url"), s("redis://:pw@demo-redis.x.svc:6379"));
    assert_eq!(get("redis.key_prefix"), s("team-a"));
    let n = |x: i64| serde_yaml::Value::from(x);
    for (key, value) in [
        ("limits.max_message_bytes", 4096),
        ("limits.rate_limit_per_second", 80),
        ("limits.rate_limit_burst", 300),
        ("limits.rate_limit_bytes_per_second", 1_048_576),
        ("limits.rate_limit_bytes_burst", 2_097_152),
        ("limits.max_json_depth", 16),
        ("limits.max_metadata_bytes", 2048),
        ("limits.max_session_secs", 86_400),
        ("limits.outbound_queue_messages", 512),
        ("limits.outbound_queue_bytes", 2_097_152),
        ("limits.write_buffer_bytes", 524_288),
        ("limits.ping_interval_secs", 15),
        ("limits.ping_timeout_secs", 10),
        ("limits.close_timeout_ms", 2000),
        ("rooms.max_user_connections", 3),
        ("limits.max_user_connections_per_instance", 0),
        ("connections.max", 5000),
        ("connections.max_per_ip", 50),
        ("connections.header_read_timeout_ms", 5000),
        ("connections.max_header_bytes", 8192),
        ("connections.body_read_timeout_ms", 4000),
    ] {
        assert_eq!(get(key), n(value), "{key}");
    }
    assert!(v.get("jwt").unwrap().get("public_key_file").is_none());
}

#[test]
fn public_key_goes_to_a_second_file_whose_digest_is_in_config_yaml() {
    let pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    let spec = SignalingClusterSpec {
        auth: AuthSpec {
            algorithm: JwtAlgorithm::ES256,
            ..AuthSpec::default()
        },
        ..SignalingClusterSpec::default()
    };
    let mut r = resolved();
    r.jwt = JwtKey::PublicKeyPem(pem.into());
    let out = render(&cluster(spec.clone()), &r).unwrap();
    assert_eq!(
        out.extra_files.get(JWT_PUBLIC_KEY_FILE).map(String::as_str),
        Some(pem)
    );
    let v: serde_yaml::Value = serde_yaml::from_str(&out.yaml).unwrap();
    assert_eq!(v["jwt"]["algorithm"], serde_yaml::Value::from("ES256"));
    assert_eq!(
        v["jwt"]["public_key_file"],
        serde_yaml::Value::from("/etc/switchboard/jwt-public-key.pem")
    );
    assert!(v["jwt"].get("secret").is_none());
    assert!(out.yaml.contains(&format!(
        "# jwt-public-key.pem sha256: {}\n",
        sha256_hex(pem.as_bytes())
    )));

    // Rotating the key changes config.yaml and therefore the hash.
    r.jwt = JwtKey::PublicKeyPem(pem.replace("AAAA", "BBBB"));
    let rotated = render(&cluster(spec), &r).unwrap();
    assert_ne!(rotated.hash, out.hash);
}

#[test]
fn hash_is_sha256_of_exactly_the_yaml_bytes() {
    let out = render(&cluster(SignalingClusterSpec::default()), &resolved()).unwrap();
    assert_eq!(out.hash, hex::encode(Sha256::digest(out.yaml.as_bytes())));
    assert_eq!(out.hash.len(), 64);
    // Known vector, so the helper itself is checked.
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hash_changes_iff_the_config_changes() {
    let sc = cluster(SignalingClusterSpec::default());
    let a = render(&sc, &resolved()).unwrap();
    let b = render(&sc, &resolved()).unwrap();
    assert_eq!(a, b, "rendering is deterministic");

    // Fields that are not part of the server config do not change the hash.
    let mut other = sc.clone();
    other.spec.replicas = 7;
    other.spec.image = "example/other:1".into();
    other.spec.paused = true;
    assert_eq!(render(&other, &resolved()).unwrap().hash, a.hash);

    let mut r = resolved();
    r.turn_secret = Some("t".into());
    let mut with_turn = sc.clone();
    with_turn.spec.ice.turn_urls = vec!["turn:t:3478".into()];
    assert_ne!(render(&with_turn, &r).unwrap().hash, a.hash);

    let mut rotated = resolved();
    rotated.jwt = JwtKey::Hs256Secret("rotated".into());
    assert_ne!(render(&sc, &rotated).unwrap().hash, a.hash);

    let mut rooms = sc.clone();
    rooms.spec.rooms.max_participants = 51;
    assert_ne!(render(&rooms, &resolved()).unwrap().hash, a.hash);
}

#[test]
fn debug_output_hides_the_yaml() {
    let out = render(&cluster(SignalingClusterSpec::default()), &resolved()).unwrap();
    let shown = format!("{out:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(&out.hash));
}

#[test]
fn secrets_that_look_like_other_yaml_scalars_stay_strings() {
    // Generated secrets are hex: some look like numbers. User secrets can be anything.
    for secret in [
        "123e4567", "0x1F", "1234", "true", "null", "~", "yes", "- a", "a: b", "#x", "'q'",
    ] {
        let mut r = resolved();
        r.jwt = JwtKey::Hs256Secret(secret.to_owned());
        let out = render(&cluster(SignalingClusterSpec::default()), &r).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&out.yaml).unwrap();
        assert_eq!(
            v["jwt"]["secret"],
            serde_yaml::Value::String(secret.to_owned()),
            "{secret:?} in\n{}",
            out.yaml
        );
    }
}
