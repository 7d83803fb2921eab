//! Config loading through in-memory env and files: defaults, precedence,
//! every error at once, secrets from files.

use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A JWT secret long enough for the HS256 minimum.
const S: &str = "test-secret-0123456789abcdef0123456789";

fn load(a: &[&str], e: &[(&str, &str)], files: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    match Config::load(&args(a), &env(e), &env(files)) {
        Ok(Command::Run(c)) => Ok(*c),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(errs) => Err(errs.0.iter().map(ToString::to_string).collect()),
    }
}

#[test]
fn defaults() {
    let c = load(&[], &[("JWT_SECRET", S)], &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert!(!c.instance_id.is_empty());
    assert_eq!(c.jwt.algorithm, JwtAlgorithm::Hs256);
    assert_eq!(c.jwt.key, JwtKey::Secret(Secret::new(S)));
    assert_eq!(c.jwt.issuer, None);
    assert_eq!(c.ice.stun_urls, vec!["stun:stun.l.google.com:19302"]);
    assert!(c.ice.turn_urls.is_empty());
    assert_eq!(c.ice.turn_credential_ttl, Duration::from_secs(86400));
    assert_eq!(
        (
            c.ice.ice_transport_policy.as_str(),
            c.ice.bundle_policy.as_str(),
            c.ice.rtcp_mux_policy.as_str()
        ),
        ("all", "balanced", "require")
    );
    assert_eq!(
        c.rooms,
        RoomsConfig {
            max_participants: 50,
            max_user_connections: Some(5),
            presence_ttl: Duration::from_secs(30)
        }
    );
    assert_eq!(
        *c.limits,
        Limits {
            max_message_bytes: 65536,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
            rate_limit_bytes_per_second: 262_144,
            rate_limit_bytes_burst: 524_288,
            max_metadata_bytes: 1024,
            max_json_depth: 32,
            max_session: None,
            max_user_connections_per_instance: Some(20),
            outbound_queue_messages: 256,
            outbound_queue_bytes: 1_048_576,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(20),
            write_buffer_bytes: 1_048_576,
            close_timeout: Duration::from_millis(5000),
        }
    );
    assert_eq!(c.allowed_origins, None);
    assert_eq!(
        c.redis,
        RedisConfig {
            url: None,
            cluster_urls: None,
            key_prefix: "switchboard".into(),
            publish_timeout: Duration::from_secs(5),
        }
    );
    assert_eq!(
        c.shutdown,
        ShutdownConfig {
            drain_delay: Duration::from_millis(2000),
            drain_window: Duration::from_millis(10000),
            drain_timeout: Duration::from_millis(25000),
        }
    );
    assert!(!c.dev);
}

#[test]
fn precedence_flag_env_file_default() {
    let yaml = "listen: 127.0.0.1:1111\nlimits:\n  max_message_bytes: 1000\n  rate_limit_burst: 7\nrooms:\n  max_participants: 3\njwt:\n  secret: fromfile-0123456789abcdef0123456789\n";
    let files = [("/c.yaml", yaml)];
    // file only
    let c = load(&["--config", "/c.yaml"], &[], &files).unwrap();
    assert_eq!(c.listen.port(), 1111);
    assert_eq!(c.limits.max_message_bytes, 1000);
    assert_eq!(
        c.jwt.key,
        JwtKey::Secret(Secret::new("fromfile-0123456789abcdef0123456789"))
    );
    // env beats file, flag beats env; untouched keys keep the file value, then the default
    let c = load(
        &["--config=/c.yaml", "--max-message-bytes", "3000"],
        &[
            ("WEBRTC_MAX_MESSAGE_BYTES", "2000"),
            ("SWITCHBOARD_LISTEN", "127.0.0.1:2222"),
            ("JWT_SECRET", "fromenv-0123456789abcdef0123456789"),
        ],
        &files,
    )
    .unwrap();
    assert_eq!(c.limits.max_message_bytes, 3000);
    assert_eq!(c.listen.port(), 2222);
    assert_eq!(c.limits.rate_limit_burst, 7);
    assert_eq!(c.rooms.max_participants, 3);
    assert_eq!(c.limits.rate_limit_per_second, 50);
    assert_eq!(
        c.jwt.key,
        JwtKey::Secret(Secret::new("fromenv-0123456789abcdef0123456789"))
    );
    // SWITCHBOARD_CONFIG names the file too
    let c = load(&[], &[("SWITCHBOARD_CONFIG", "/c.yaml")], &files).unwrap();
    assert_eq!(c.listen.port(), 1111);
}

#[test]
fn every_error_reported_once_naming_the_setting() {
    let errs = load(
        &[
            "--max-message-bytes",
            "lots",
            "--log-format",
            "xml",
            "--bogus-flag",
            "1",
        ],
        &[
            ("WEBRTC_RATE_LIMIT_BURST", "0"),
            ("WEBRTC_ICE_TRANSPORT_POLICY", "nope"),
            ("REDIS_URL", "http://x"),
            ("SWITCHBOARD_LISTEN", "nowhere"),
        ],
        &[],
    )
    .unwrap_err();
    let expect = [
        "SWITCHBOARD_LISTEN",
        "SWITCHBOARD_LOG_FORMAT",
        "JWT_SECRET",
        "WEBRTC_ICE_TRANSPORT_POLICY",
        "WEBRTC_MAX_MESSAGE_BYTES",
        "WEBRTC_RATE_LIMIT_BURST",
        "REDIS_URL",
        "--bogus-flag",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for name in expect {
        assert_eq!(
            errs.iter().filter(|e| e.contains(name)).count(),
            1,
            "{name} in {errs:#?}"
        );
    }
    for e in &errs {
        assert!(!e.contains('\n'), "one line each: {e}");
        assert!(e.starts_with("config error: "), "{e}");
    }
    assert!(
        !errs.iter().any(|e| e.contains("http://x")),
        "URLs may hold passwords: {errs:#?}"
    );
}

#[test]
fn missing_key_is_exactly_one_error() {
    let errs = load(&[], &[], &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("JWT_SECRET") && errs[0].contains("jwt.secret"),
        "{}",
        errs[0]
    );
}

#[test]
fn secret_files_are_read_and_trimmed() {
    let c = load(
        &[],
        &[
            ("JWT_SECRET_FILE", "/s"),
            ("WEBRTC_TURN_SECRET_FILE", "/t"),
            ("REDIS_URL_FILE", "/r"),
        ],
        &[
            ("/s", "topsecret-0123456789abcdef0123456789\n"),
            ("/t", "turn\n"),
            ("/r", "redis://:pw@h:6379/0\n"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.jwt.key,
        JwtKey::Secret(Secret::new("topsecret-0123456789abcdef0123456789"))
    );
    assert_eq!(c.ice.turn_secret, Some(Secret::new("turn")));
    assert_eq!(c.redis.url, Some(Secret::new("redis://:pw@h:6379/0")));
    let errs = load(
        &[],
        &[("JWT_SECRET_FILE", "/missing"), ("JWT_SECRET", S)],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("JWT_SECRET_FILE") && errs[0].contains("not both"));
    // Exactly one line: the unreadable file, not also "no JWT key configured".
    let errs = load(&[], &[("JWT_SECRET_FILE", "/missing")], &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("JWT_SECRET_FILE") && errs[0].contains("/missing"),
        "{errs:#?}"
    );
    let errs = load(&[], &[("JWT_SECRET_FILE", "/empty")], &[("/empty", "\n")]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("is empty"), "{errs:#?}");
}

#[test]
fn short_hs256_secrets_are_refused_outside_dev() {
    let short = "x".repeat(MIN_HS256_SECRET_BYTES - 1);
    let errs = load(&[], &[("JWT_SECRET", short.as_str())], &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("jwt.secret (JWT_SECRET")
            && errs[0].contains("31 bytes")
            && errs[0].contains("at least 32"),
        "{}",
        errs[0]
    );
    assert!(
        !errs[0].contains(&short),
        "never echo the secret: {}",
        errs[0]
    );
    // From a file, the error names the file setting.
    let errs = load(&[], &[("JWT_SECRET_FILE", "/s")], &[("/s", "short\n")]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("JWT_SECRET_FILE"), "{}", errs[0]);
    // Exactly 32 bytes is enough; --dev ignores the setting.
    let ok = "x".repeat(MIN_HS256_SECRET_BYTES);
    assert!(load(&[], &[("JWT_SECRET", ok.as_str())], &[]).is_ok());
    assert!(load(&["--dev"], &[("JWT_SECRET", "short")], &[]).is_ok());
}

#[test]
fn relay_policy_needs_a_turn_url() {
    let errs = load(
        &[],
        &[("JWT_SECRET", S), ("WEBRTC_ICE_TRANSPORT_POLICY", "relay")],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("WEBRTC_ICE_TRANSPORT_POLICY") && errs[0].contains("WEBRTC_TURN_URLS"),
        "{}",
        errs[0]
    );
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("WEBRTC_ICE_TRANSPORT_POLICY", "relay"),
            ("WEBRTC_TURN_URLS", "turn:t.example:3478"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.ice.ice_transport_policy, "relay");
}

#[test]
fn drain_timeout_must_cover_the_drain_delay() {
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("SWITCHBOARD_DRAIN_DELAY_MS", "3000"),
            ("SWITCHBOARD_DRAIN_TIMEOUT_MS", "2999"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("SWITCHBOARD_DRAIN_TIMEOUT_MS") && errs[0].contains("3000 ms"),
        "{}",
        errs[0]
    );
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("SWITCHBOARD_DRAIN_DELAY_MS", "3000"),
            ("SWITCHBOARD_DRAIN_TIMEOUT_MS", "3000"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.shutdown.drain_timeout, Duration::from_millis(3000));
}

#[test]
fn write_buffer_must_hold_two_messages() {
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("WEBRTC_MAX_MESSAGE_BYTES", "100000"),
            ("WEBRTC_WRITE_BUFFER_BYTES", "199999"),
            ("WEBRTC_CLOSE_TIMEOUT_MS", "99"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains("WEBRTC_WRITE_BUFFER_BYTES")
            && e.contains("limits.max_message_bytes (100000 bytes)")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("WEBRTC_CLOSE_TIMEOUT_MS") && e.contains(">= 100")),
        "{errs:#?}"
    );
    let c = load(
        &[
            "--write-buffer-bytes",
            "200000",
            "--close-timeout-ms",
            "250",
        ],
        &[("JWT_SECRET", S), ("WEBRTC_MAX_MESSAGE_BYTES", "100000")],
        &[],
    )
    .unwrap();
    assert_eq!(
        (c.limits.write_buffer_bytes, c.limits.close_timeout),
        (200_000, Duration::from_millis(250))
    );
}

#[test]
fn lists_from_env_flags_and_yaml() {
    let c = load(
        &["--turn-urls", "turn:a:3478, turns:b:5349"],
        &[
            ("JWT_SECRET", S),
            ("WEBRTC_STUN_URLS", "stun:x:1,stun:y:2"),
            (
                "WEBRTC_ALLOWED_ORIGINS",
                "https://a.example, http://b.example/",
            ),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.ice.stun_urls, vec!["stun:x:1", "stun:y:2"]);
    assert_eq!(c.ice.turn_urls, vec!["turn:a:3478", "turns:b:5349"]);
    assert_eq!(
        c.allowed_origins,
        Some(vec![
            "https://a.example".to_string(),
            "http://b.example".to_string()
        ])
    );
    let yaml = "jwt: {secret: test-secret-0123456789abcdef0123456789}\nice:\n  stun_urls: [\"stun:z:3\"]\nallowed_origins:\n  - https://c.example\n";
    let c = load(&["--config", "/c"], &[], &[("/c", yaml)]).unwrap();
    assert_eq!(c.ice.stun_urls, vec!["stun:z:3"]);
    assert_eq!(
        c.allowed_origins,
        Some(vec!["https://c.example".to_string()])
    );
    let errs = load(
        &[],
        &[("JWT_SECRET", S), ("WEBRTC_TURN_URLS", "http://nope")],
        &[],
    )
    .unwrap_err();
    assert!(errs[0].contains("WEBRTC_TURN_URLS"), "{errs:#?}");
}

#[test]
fn yaml_errors() {
    let errs = load(
        &["--config", "/c"],
        &[],
        &[(
            "/c",
            "jwt:\n  secret: test-secret-0123456789abcdef0123456789\n  secrt: typo\nlimits: {max_message_bytes: [1]}\nnonsense: 1\n",
        )],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs
        .iter()
        .any(|e| e.contains("jwt.secrt") && e.contains("unknown setting")));
    assert!(errs.iter().any(|e| e.contains("nonsense")));
    assert!(errs.iter().any(|e| e.contains("limits.max_message_bytes")));
    let errs = load(
        &["--config", "/c"],
        &[("JWT_SECRET", S)],
        &[("/c", "listen: [")],
    )
    .unwrap_err();
    assert!(
        errs[0].contains("invalid YAML") && errs[0].contains("SWITCHBOARD_CONFIG"),
        "{errs:#?}"
    );
    let errs = load(&["--config", "/nope"], &[("JWT_SECRET", S)], &[]).unwrap_err();
    assert!(errs[0].contains("/nope"), "{errs:#?}");
}

#[test]
fn public_key_algorithms() {
    let pem = include_str!("../tests/keys/rsa_public.pem");
    let c = load(
        &[
            "--jwt-algorithm",
            "RS256",
            "--jwt-public-key-file",
            "/k.pem",
        ],
        &[],
        &[("/k.pem", pem)],
    )
    .unwrap();
    assert_eq!(c.jwt.algorithm, JwtAlgorithm::Rs256);
    assert_eq!(c.jwt.key, JwtKey::PublicKeyPem(pem.into()));
    // An RSA key is not an EC key.
    let errs = load(
        &[
            "--jwt-algorithm",
            "ES256",
            "--jwt-public-key-file",
            "/k.pem",
        ],
        &[],
        &[("/k.pem", pem)],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("JWT_PUBLIC_KEY_FILE"), "{errs:#?}");
    // A secret with RS256 is a mistake worth reporting.
    let errs = load(
        &[
            "--jwt-algorithm",
            "RS256",
            "--jwt-public-key-file",
            "/k.pem",
        ],
        &[("JWT_SECRET", S)],
        &[("/k.pem", pem)],
    )
    .unwrap_err();
    assert!(errs[0].contains("JWT_SECRET"), "{errs:#?}");
}

#[test]
fn connection_limits_defaults_and_errors() {
    let c = load(&[], &[("JWT_SECRET", S)], &[]).unwrap();
    assert_eq!(
        c.connections,
        ConnectionsConfig {
            max: 10_000,
            max_per_ip: 100,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16384,
            body_read_timeout: Duration::from_secs(10),
            trusted_proxies: crate::listener::TrustedProxies::default(),
        }
    );
    let c = load(
        &["--trusted-proxies", "10.0.0.0/8, 192.0.2.7"],
        &[
            ("JWT_SECRET", S),
            ("SWITCHBOARD_HEADER_READ_TIMEOUT_MS", "250"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        c.connections.header_read_timeout,
        Duration::from_millis(250)
    );
    assert!(c
        .connections
        .trusted_proxies
        .contains("10.9.8.7".parse().unwrap()));
    assert!(c
        .connections
        .trusted_proxies
        .contains("192.0.2.7".parse().unwrap()));
    assert!(!c
        .connections
        .trusted_proxies
        .contains("192.0.2.8".parse().unwrap()));
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("SWITCHBOARD_MAX_CONNECTIONS", "0"),
            ("SWITCHBOARD_MAX_HEADER_BYTES", "4096"),
            ("SWITCHBOARD_HEADER_READ_TIMEOUT_MS", "10"),
            ("SWITCHBOARD_BODY_READ_TIMEOUT_MS", "99"),
            ("SWITCHBOARD_TRUSTED_PROXIES", "10.0.0.0/8,ingress.local"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 5, "{errs:#?}");
    for (err, names) in errs.iter().zip([
        "connections.max (SWITCHBOARD_MAX_CONNECTIONS",
        "connections.header_read_timeout_ms (SWITCHBOARD_HEADER_READ_TIMEOUT_MS",
        "connections.max_header_bytes (SWITCHBOARD_MAX_HEADER_BYTES",
        "connections.body_read_timeout_ms (SWITCHBOARD_BODY_READ_TIMEOUT_MS",
        "connections.trusted_proxies (SWITCHBOARD_TRUSTED_PROXIES",
    ]) {
        assert!(err.contains(names), "{err} should name {names}");
    }
    assert!(errs[4].contains("\"ingress.local\""), "{}", errs[4]);
}

#[test]
fn public_key_mistakes_are_one_line_each_with_the_reason() {
    let cases = [
        (
            "RS256",
            include_str!("../tests/keys/rsa_private.pem"),
            "is a private key",
        ),
        (
            "RS256",
            include_str!("../tests/keys/rsa_1024_public.pem"),
            "is a 1024-bit RSA key; RS256 needs at least 2048 bits",
        ),
        (
            "ES256",
            include_str!("../tests/keys/ec_p384_public.pem"),
            "is an EC P-384 public key; ES256 needs an EC P-256 key",
        ),
    ];
    for (algorithm, pem, reason) in cases {
        let errs = load(
            &[
                "--jwt-algorithm",
                algorithm,
                "--jwt-public-key-file",
                "/k.pem",
            ],
            &[],
            &[("/k.pem", pem)],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("config error: jwt.public_key_file (JWT_PUBLIC_KEY_FILE / --jwt-public-key-file): /k.pem ")
                && errs[0].contains(reason)
                && !errs[0].contains('\n'),
            "{errs:#?}"
        );
        assert!(!errs[0].contains("MII"), "key material echoed: {errs:#?}");
    }
}

#[test]
fn dev_mode_needs_no_key_and_uses_the_in_process_bus() {
    let c = load(&["--dev"], &[("REDIS_URL", "redis://h:6379")], &[]).unwrap();
    assert!(c.dev);
    assert_eq!(c.jwt.algorithm, JwtAlgorithm::Hs256);
    match &c.jwt.key {
        JwtKey::Secret(s) => assert_eq!(s.expose().len(), 64),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.redis.url, None);
    let other = load(&["--dev"], &[], &[]).unwrap();
    assert_ne!(other.jwt.key, c.jwt.key, "a fresh secret each start");
}

#[test]
fn per_user_caps_default_on_zero_turns_them_off_and_dev_lifts_them_unless_set() {
    let c = load(&[], &[("JWT_SECRET", S)], &[]).unwrap();
    assert_eq!(
        (
            c.rooms.max_user_connections,
            c.limits.max_user_connections_per_instance
        ),
        (Some(5), Some(20))
    );
    let off = load(
        &["--max-user-connections-per-room", "0"],
        &[
            ("JWT_SECRET", S),
            ("WEBRTC_MAX_USER_CONNECTIONS_PER_INSTANCE", "0"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        (
            off.rooms.max_user_connections,
            off.limits.max_user_connections_per_instance
        ),
        (None, None)
    );
    // --dev prints one token (user `dev`) for any number of local connections.
    let dev = load(&["--dev"], &[], &[]).unwrap();
    assert_eq!(
        (
            dev.rooms.max_user_connections,
            dev.limits.max_user_connections_per_instance
        ),
        (None, None)
    );
    let dev_capped = load(
        &["--dev"],
        &[("WEBRTC_MAX_USER_CONNECTIONS_PER_ROOM", "3")],
        &[],
    )
    .unwrap();
    assert_eq!(dev_capped.rooms.max_user_connections, Some(3));
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("WEBRTC_MAX_USER_CONNECTIONS_PER_ROOM", "-1"),
            ("WEBRTC_MAX_USER_CONNECTIONS_PER_INSTANCE", "many"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        errs,
        [
            "config error: rooms.max_user_connections (WEBRTC_MAX_USER_CONNECTIONS_PER_ROOM / --max-user-connections-per-room): expected an integer (0 = no limit), got \"-1\"",
            "config error: limits.max_user_connections_per_instance (WEBRTC_MAX_USER_CONNECTIONS_PER_INSTANCE / --max-user-connections-per-instance): expected an integer (0 = no limit), got \"many\"",
        ]
    );
}

#[test]
fn help_version_and_missing_flag_values() {
    assert!(matches!(
        Config::load(&args(&["--help"]), &env(&[]), &env(&[])),
        Ok(Command::Help)
    ));
    assert!(matches!(
        Config::load(&args(&["--version"]), &env(&[]), &env(&[])),
        Ok(Command::Version)
    ));
    let errs = load(&["--listen"], &[("JWT_SECRET", S)], &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("--listen needs a value"), "{errs:#?}");
    let u = usage();
    for s in SETTINGS {
        assert!(
            u.contains(s.flag) && u.contains(s.env),
            "{} missing from --help",
            s.flag
        );
    }
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let c = load(
        &[],
        &[
            ("JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-hunter2"),
            ("WEBRTC_TURN_SECRET", "turnpw"),
            ("REDIS_URL", "redis://:pw123@h"),
        ],
        &[],
    )
    .unwrap();
    let dbg = format!("{c:?}");
    for s in ["hunter2", "turnpw", "pw123"] {
        assert!(!dbg.contains(s), "{s} leaked");
    }
}

#[test]
fn settings_table_is_consistent() {
    let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), SETTINGS.len(), "duplicate YAML keys");
    for s in SETTINGS {
        assert!(s.flag.starts_with("--"));
        assert_eq!(find(s.key).key, s.key);
    }
}

const CONFIG_DOC: &str = include_str!("../../docs/configuration.md");

#[test]
fn docs_list_every_setting() {
    for s in SETTINGS {
        let row = CONFIG_DOC
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", s.key)))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {}", s.key));
        assert!(
            row.contains(&format!("`{}`", s.env)) && row.contains(&format!("`{}`", s.flag)),
            "row for {} names the wrong env/flag: {row}",
            s.key
        );
    }
}

#[test]
fn docs_example_file_loads() {
    let start = CONFIG_DOC.find("```yaml\n").expect("example block") + "```yaml\n".len();
    let end = start + CONFIG_DOC[start..].find("```").expect("end of block");
    let yaml = &CONFIG_DOC[start..end];
    let c = load(
        &["--config", "/etc/switchboard/config.yaml"],
        &[],
        &[
            ("/etc/switchboard/config.yaml", yaml),
            (
                "/etc/switchboard/jwt-secret",
                "docs-example-secret-0123456789abcdef\n",
            ),
            ("/etc/switchboard/turn-secret", "t\n"),
            ("/etc/switchboard/webhook-secret", &format!("{WHSEC}\n")),
            ("/etc/switchboard/billing-webhook-secret", WHSEC2),
        ],
    )
    .unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.jwt.audience.as_deref(), Some("switchboard"));
    assert_eq!(c.ice.turn_urls.len(), 2);
    assert!(c.redis.url.is_some());
    let names: Vec<&str> = c
        .webhooks
        .endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["backend.example.com/switchboard/webhooks", "billing"]
    );
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC2: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[test]
fn webhook_endpoints_come_from_the_urls_and_the_endpoint_list() {
    use crate::webhook::{EventFilter, EventKind, SigningSecret};
    let endpoints = r#"[{"url": "https://b.example/h?token=x", "name": "billing", "secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "events": ["room_started"]},
                        {"url": "http://c.example:8080/h/"}]"#;
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            (
                "SWITCHBOARD_WEBHOOK_URLS",
                "https://a.example/hooks, http://127.0.0.1:9000/x",
            ),
            ("SWITCHBOARD_WEBHOOK_SECRET", WHSEC),
            (
                "SWITCHBOARD_WEBHOOK_EVENTS",
                "participant_joined,participant_left",
            ),
            ("SWITCHBOARD_WEBHOOK_ENDPOINTS", endpoints),
        ],
        &[],
    )
    .unwrap();
    let w = &c.webhooks;
    let names: Vec<&str> = w.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.example/hooks",
            "127.0.0.1:9000/x",
            "billing",
            "c.example:8080/h"
        ]
    );
    let shared = SigningSecret::parse(WHSEC).unwrap();
    assert_eq!(w.endpoints[0].secret, shared);
    assert_eq!(
        w.endpoints[0].events,
        EventFilter::of(&[EventKind::ParticipantJoined, EventKind::ParticipantLeft])
    );
    assert_eq!(w.endpoints[2].secret, SigningSecret::parse(WHSEC2).unwrap());
    assert_eq!(
        w.endpoints[2].events,
        EventFilter::of(&[EventKind::RoomStarted])
    );
    assert_eq!(
        w.endpoints[3].secret, shared,
        "the shared secret by default"
    );
    assert_eq!(w.endpoints[3].events, EventFilter::ALL);
    assert_eq!(w.timeout, Duration::from_secs(15));
    assert_eq!(w.retry_horizon, Duration::from_secs(3600));
    // Nothing configured: no endpoints, no errors.
    let none = load(&[], &[("JWT_SECRET", S)], &[]).unwrap();
    assert!(none.webhooks.endpoints.is_empty());
}

#[test]
fn webhook_endpoints_may_be_a_yaml_list_in_the_file() {
    let yaml = "webhooks:\n  endpoints:\n    - url: https://a.example/h\n      secret_file: /s\n      events: [room_finished]\n  timeout_ms: 2000\n";
    let c = load(
        &["--config", "/c.yaml"],
        &[("JWT_SECRET", S)],
        &[("/c.yaml", yaml), ("/s", WHSEC)],
    )
    .unwrap();
    assert_eq!(c.webhooks.endpoints.len(), 1);
    assert_eq!(c.webhooks.timeout, Duration::from_secs(2));
}

#[test]
fn webhook_mistakes_are_one_line_each_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h")],
            "config error: webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET / --webhook-secret): webhooks.urls needs a signing secret",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h"), ("SWITCHBOARD_WEBHOOK_SECRET", "hunter2hunter2")],
            "config error: webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET / --webhook-secret): expected a Standard Webhooks secret starting with whsec_",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h"), ("SWITCHBOARD_WEBHOOK_SECRET", "whsec_AAAA")],
            "config error: webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET / --webhook-secret): the key is 3 bytes",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "ftp://a.example/h?token=s3cret"), ("SWITCHBOARD_WEBHOOK_SECRET", WHSEC)],
            "config error: webhooks.urls (SWITCHBOARD_WEBHOOK_URLS / --webhook-urls): item 1: expected an http:// or https:// URL",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_SECRET", WHSEC)],
            "config error: webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET / --webhook-secret): set, but no webhook endpoint is configured",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_EVENTS", "room_started")],
            "config error: webhooks.events (SWITCHBOARD_WEBHOOK_EVENTS / --webhook-events): filters webhooks.urls, which is empty",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h"), ("SWITCHBOARD_WEBHOOK_SECRET", WHSEC), ("SWITCHBOARD_WEBHOOK_EVENTS", "room.started")],
            "config error: webhooks.events (SWITCHBOARD_WEBHOOK_EVENTS / --webhook-events): unknown event type \"room.started\"",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_ENDPOINTS", r#"[{"url": "https://a.example/h"}]"#)],
            "config error: webhooks.endpoints (SWITCHBOARD_WEBHOOK_ENDPOINTS / --webhook-endpoints): endpoint 1: no secret",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_ENDPOINTS", r#"[{"url": "https://a.example/h", "secret": "whsec_x", "scret": 1}]"#)],
            "config error: webhooks.endpoints (SWITCHBOARD_WEBHOOK_ENDPOINTS / --webhook-endpoints): expected a list of {url, name, secret | secret_file, events} objects: .[0]: unknown field `scret`",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h"), ("SWITCHBOARD_WEBHOOK_SECRET", WHSEC), ("SWITCHBOARD_WEBHOOK_ENDPOINTS", r#"[{"url": "https://a.example/h"}]"#)],
            "config error: webhooks.endpoints (SWITCHBOARD_WEBHOOK_ENDPOINTS / --webhook-endpoints): endpoint a.example/h is configured twice",
        ),
        (
            &[("SWITCHBOARD_WEBHOOK_URLS", "https://a.example/h"), ("SWITCHBOARD_WEBHOOK_SECRET", WHSEC), ("SWITCHBOARD_WEBHOOK_RETRY_INITIAL_MS", "5000"), ("SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "1000")],
            "config error: webhooks.retry_max_ms (SWITCHBOARD_WEBHOOK_RETRY_MAX_MS / --webhook-retry-max-ms): must be at least webhooks.retry_initial_ms",
        ),
    ];
    for (env, want) in cases {
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("JWT_SECRET", S));
        let errs = load(&[], &env, &[]).unwrap_err();
        assert_eq!(errs.len(), 1, "{env:?}: {errs:?}");
        assert!(errs[0].starts_with(want), "{env:?}: {errs:?}");
        assert!(
            !errs[0].contains("hunter2") && !errs[0].contains("s3cret"),
            "a secret is echoed: {errs:?}"
        );
    }
}

#[test]
fn redis_settings_are_checked_at_load() {
    let long = "p".repeat(65);
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("REDIS_KEY_PREFIX", &long),
            ("REDIS_URL", "redis://:hunter2@host:notaport/"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains("REDIS_KEY_PREFIX")),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("REDIS_URL")), "{errs:#?}");
    assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:#?}");
    let errs = load(&[], &[("JWT_SECRET", S), ("REDIS_KEY_PREFIX", "a b")], &[]).unwrap_err();
    assert!(errs[0].contains("REDIS_KEY_PREFIX"), "{errs:#?}");
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("REDIS_KEY_PREFIX", "team-a:prod"),
            ("REDIS_URL", "rediss://:pw@redis.example:6380/2"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.redis.key_prefix, "team-a:prod");
}

#[test]
fn a_redis_cluster_is_named_by_its_seeds_and_excludes_one_redis() {
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            (
                "REDIS_CLUSTER_URLS",
                "redis://u:pw@h1:7000, rediss://u:pw@h2:7001",
            ),
        ],
        &[],
    );
    // Mixed schemes are refused by the cluster client: one scheme for every seed.
    let errs = c.unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("REDIS_CLUSTER_URLS"), "{errs:#?}");
    assert!(!errs[0].contains("pw"), "{errs:#?}");
    let c = load(
        &[],
        &[
            ("JWT_SECRET", S),
            (
                "REDIS_CLUSTER_URLS",
                "redis://u:pw@h1:7000,redis://u:pw@h2:7001",
            ),
        ],
        &[],
    )
    .unwrap();
    let urls: Vec<&str> = c
        .redis
        .cluster_urls
        .iter()
        .flatten()
        .map(Secret::expose)
        .collect();
    assert_eq!(urls, ["redis://u:pw@h1:7000", "redis://u:pw@h2:7001"]);
    assert_eq!(c.redis.url, None);
    // Both engines at once: one line naming the setting.
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            ("REDIS_URL", "redis://h:6379"),
            ("REDIS_CLUSTER_URLS", "redis://h1:7000"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("REDIS_CLUSTER_URLS"), "{errs:#?}");
    assert!(errs[0].contains("not both"), "{errs:#?}");
    // Not URLs: counted, never echoed.
    let errs = load(
        &[],
        &[
            ("JWT_SECRET", S),
            (
                "REDIS_CLUSTER_URLS",
                "http://:secretpw@h1:7000,redis://h2:1",
            ),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("1 of 2"), "{errs:#?}");
    assert!(!errs[0].contains("secretpw"), "{errs:#?}");
    // --dev keeps the in-process bus.
    let c = load(
        &["--dev"],
        &[("REDIS_CLUSTER_URLS", "redis://h1:7000")],
        &[],
    )
    .unwrap();
    assert_eq!(c.redis.cluster_urls, None);
}

fn load_token(
    a: &[&str],
    e: &[(&str, &str)],
    files: &[(&str, &str)],
) -> Result<TokenCommand, Vec<String>> {
    match Config::load(&args(a), &env(e), &env(files)) {
        Ok(Command::Token(c)) => Ok(*c),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(errs) => Err(errs.0.iter().map(ToString::to_string).collect()),
    }
}

#[test]
fn token_reads_the_same_sources_and_keeps_its_arguments() {
    let yaml = "jwt:\n  secret: fromfile-0123456789abcdef0123456789\n  issuer: backend\n";
    let c = load_token(
        &[
            "--config",
            "/c.yaml",
            "--jwt-audience",
            "before",
            "token",
            "--sub",
            "alice",
            "--room",
            "a",
            "--room",
            "b",
            "--jwt-audience",
            "after",
        ],
        &[],
        &[("/c.yaml", yaml)],
    )
    .unwrap();
    assert_eq!(
        c.args,
        TokenArgs {
            sub: Some("alice".into()),
            rooms: vec!["a".into(), "b".into()],
            ..TokenArgs::default()
        }
    );
    let secret = Secret::new("fromfile-0123456789abcdef0123456789");
    assert_eq!(c.signing.key, SigningKey::Secret(secret.clone()));
    assert_eq!(c.signing.issuer.as_deref(), Some("backend"));
    // A flag after `token` beats the same flag before it.
    assert_eq!(c.signing.audience.as_deref(), Some("after"));
    assert_eq!(
        c.signing.verify,
        Some(JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Secret(secret),
            issuer: Some("backend".into()),
            audience: Some("after".into()),
        })
    );
    // Only the jwt settings matter to `token`.
    assert!(load_token(
        &["token", "--sub", "a"],
        &[("JWT_SECRET", S), ("WEBRTC_RATE_LIMIT_BURST", "0")],
        &[]
    )
    .is_ok());
}

#[test]
fn token_needs_a_signing_key() {
    let pem = include_str!("../tests/keys/rsa_public.pem");
    let private = include_str!("../tests/keys/rsa_private.pem");
    let rs256 = [
        ("JWT_ALGORITHM", "RS256"),
        ("JWT_PUBLIC_KEY_FILE", "/pub.pem"),
    ];
    let files = [
        ("/pub.pem", pem),
        ("/key.pem", private),
        ("/bad.pem", "not a key"),
    ];
    // The server holds only the public key: one line naming the private key setting.
    let errs = load_token(&["token", "--sub", "a"], &rs256, &files).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("config error: jwt.private_key_file (JWT_PRIVATE_KEY_FILE / --jwt-private-key-file): no signing key"),
        "{errs:#?}"
    );
    let c = load_token(
        &["token", "--sub", "a", "--jwt-private-key-file", "/key.pem"],
        &rs256,
        &files,
    )
    .unwrap();
    assert_eq!(
        c.signing.key,
        SigningKey::PrivateKeyPem(Secret::new(private))
    );
    assert_eq!(
        c.signing.verify.map(|v| v.key),
        Some(JwtKey::PublicKeyPem(pem.into()))
    );
    // Without the public key there is nothing to check against, which is fine.
    let c = load_token(
        &["token", "--sub", "a"],
        &[
            ("JWT_ALGORITHM", "RS256"),
            ("JWT_PRIVATE_KEY_FILE", "/key.pem"),
        ],
        &files,
    )
    .unwrap();
    assert_eq!(c.signing.verify, None);
    let errs = load_token(
        &["token", "--sub", "a", "--jwt-private-key-file", "/bad.pem"],
        &rs256,
        &files,
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("/bad.pem is not an RSA private key"),
        "{errs:#?}"
    );
    // HS256 without a secret: one line, pointing at the private key for RS256/ES256.
    let errs = load_token(&["token", "--sub", "a"], &[], &[]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("JWT_SECRET") && errs[0].contains("jwt.private_key_file"),
        "{errs:#?}"
    );
    let errs =
        load_token(&["--dev", "token", "--sub", "a"], &[("JWT_SECRET", S)], &[]).unwrap_err();
    assert_eq!(errs, ["config error: --dev: not used with token: it would sign with a random secret no server knows"]);
    // The server itself never reads the private key.
    assert!(load(
        &[],
        &[("JWT_SECRET", S), ("JWT_PRIVATE_KEY_FILE", "/missing")],
        &[]
    )
    .is_ok());
}

#[test]
fn token_help_and_bad_token_flags() {
    assert!(matches!(
        Config::load(&args(&["token", "--help"]), &env(&[]), &env(&[])),
        Ok(Command::TokenHelp)
    ));
    assert!(matches!(
        Config::load(&args(&["-h", "token"]), &env(&[]), &env(&[])),
        Ok(Command::Help)
    ));
    let help = token_usage();
    for flag in [
        "--sub",
        "--name",
        "--room",
        "--ttl",
        "--grant",
        "--metadata",
        "--jwt-private-key-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from token --help");
    }
    let errs = load_token(
        &["token", "--sub", "a", "--bogus", "--ttl"],
        &[("JWT_SECRET", S)],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        errs,
        [
            "config error: command line argument \"--bogus\": unknown flag (see --help)",
            "config error: command line argument \"--ttl\": --ttl needs a value",
        ]
    );
}
