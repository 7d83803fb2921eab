//! Contract between the operator and the server: the config files the operator renders are
//! fed to the real `switchboard-server` binary (with a real `redis-server`), which must accept
//! every key, start, become ready and serve exactly the ICE settings and JWT rules of the spec.
//!
//! Needs the server binary (`cargo build -p switchboard-server` into the same target directory,
//! or `SWITCHBOARD_SERVER_BIN=/path/to/switchboard-server`) and `redis-server` on PATH; it fails
//! with that instruction when either is missing, never skips.

mod common;

use std::time::Duration;

use common::{cluster_from_yaml, secret, secrets_for};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};
use switchboard_e2e::client::{resume_path, Client, ConnectOptions, Event};
use switchboard_e2e::http::{get, get_bearer};
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::{ec_public_key_path, rsa_public_key_path, Claims};
use switchboard_e2e::webhook_receiver::{new_secret, verify, Receiver};
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::config::{self, RenderedConfig, MOUNT_DIR};
use switchboard_operator::resolve::{self, JwtKey, Resolved};

/// The config as a reconcile renders it: the generated Secrets (deterministic bytes), the
/// user's Secrets as given, then `resolve` + `render`.
fn render_as_reconciled(sc: &SignalingCluster, user: Vec<Secret>) -> RenderedConfig {
    let fetched = secrets_for(sc, user);
    let resolved = resolve::resolve(sc, &fetched).unwrap_or_else(|e| panic!("resolve: {e}"));
    config::render(sc, &resolved).expect("renders")
}

/// Writes the config Secret's files into a directory standing in for the pod's mount and starts
/// the server on it. The rendered file names the mount directory (`/etc/switchboard`) for the
/// public key; that one path is pointed at the temporary directory.
fn start(rendered: &RenderedConfig) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path").to_owned();
    let yaml = rendered
        .yaml
        .replace(&format!("{MOUNT_DIR}/"), &format!("{dir_str}/"));
    std::fs::write(dir.path().join(config::CONFIG_FILE), yaml).expect("write config");
    for (name, content) in &rendered.extra_files {
        std::fs::write(dir.path().join(name), content).expect("write extra file");
    }
    let path = dir.path().join(config::CONFIG_FILE);
    // `--listen 127.0.0.1:0` (added by ServerOptions) overrides the file's 0.0.0.0:8080, so the
    // test learns the port; everything else comes from the file (the environment is cleared).
    let server = ServerOptions::new()
        .arg("--config")
        .arg(path.to_str().expect("utf-8 path"))
        .start();
    (dir, server)
}

/// Asserts that `/webrtc/config` refuses `token` with 401.
async fn assert_refused(server: &ServerProcess, token: &str) {
    let r = get_bearer(server.addr(), "/webrtc/config", token).await;
    assert_eq!(r.status, 401, "token accepted: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_spec_config_starts_a_ready_server_on_redis() {
    let redis = RedisProcess::start();
    let sc = cluster_from_yaml(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {name: demo}\nspec: {}\n",
    );
    let secret = "0123456789abcdef0123456789abcdef";
    let resolved = Resolved {
        jwt: JwtKey::Hs256Secret(secret.to_owned()),
        turn_secret: None,
        redis_url: redis.url(),
        redis_cluster: false,
        webhook_secrets: Vec::new(),
        resume_secret: None,
    };
    let rendered = config::render(&sc, &resolved).expect("renders");
    let (_dir, server) = start(&rendered);
    assert_eq!(get(server.addr(), "/webrtc/health/live").await.status, 200);
    server.wait_ready(true, Duration::from_secs(15)).await;

    let token = Claims::user("alice").hs256(secret);
    let cfg = get_bearer(server.addr(), "/webrtc/config", &token).await;
    assert_eq!(cfg.status, 200, "{}", cfg.text());
    let body = cfg.json();
    assert_eq!(
        body["iceServers"],
        json!([{"urls": ["stun:stun.l.google.com:19302"]}]),
        "{body}"
    );
    assert_eq!(body["iceTransportPolicy"], "all");
    assert_eq!(body["bundlePolicy"], "balanced");
    assert_eq!(body["rtcpMuxPolicy"], "require");
    // A token signed with another key is refused: the rendered secret is the one in use.
    let forged = Claims::user("mallory").hs256("another-secret-another-secret!!");
    assert_refused(&server, &forged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_config_with_external_redis_starts_a_ready_server() {
    let redis = RedisProcess::start();
    // Everything the renderer knows about, so every key reaches the server's parser; the
    // Secrets resolved as a reconcile resolves them (the JWT key generated).
    let sc = cluster_from_yaml(
        &json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "signal"},
            "spec": {
                "replicas": 2,
                "redis": {"external": {"secretRef": {"name": "redis-url"}}, "keyPrefix": "contract"},
                "ice": {
                    "stunUrls": ["stun:stun.example.com:3478"],
                    "turnUrls": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
                    "credentialTtlSeconds": 3600,
                    "iceTransportPolicy": "relay",
                    "bundlePolicy": "max-bundle",
                    "rtcpMuxPolicy": "require"
                },
                "auth": {"issuer": "https://auth.example.com", "audience": "switchboard"},
                "rooms": {"maxParticipants": 8, "presenceTtlSeconds": 45},
                "allowedOrigins": ["https://app.example.com"]
            }
        })
        .to_string(),
    );
    let rendered = render_as_reconciled(
        &sc,
        vec![secret(
            "redis-url",
            &[("url", &format!("redis://127.0.0.1:{}/0", redis.port()))],
        )],
    );
    assert_eq!(
        rendered.hash,
        config::sha256_hex(rendered.yaml.as_bytes()),
        "hash is not the sha256 of the YAML"
    );
    let (_dir, server) = start(&rendered);
    server.wait_ready(true, Duration::from_secs(15)).await;

    // The server runs with what the operator meant: Redis bus, auth enforced.
    let health = get(server.addr(), "/webrtc/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        health.text().contains("redis"),
        "/webrtc/health does not report the Redis bus: {}",
        health.text()
    );
    let cfg = get(server.addr(), "/webrtc/config").await;
    assert_eq!(
        cfg.status,
        401,
        "/webrtc/config without a token: {}",
        cfg.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_config_with_an_rs256_public_key_starts_and_verifies_with_it() {
    let redis = RedisProcess::start();
    let pem = std::fs::read_to_string(rsa_public_key_path()).expect("RSA test key");
    let sc = cluster_from_yaml(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {name: signal}\nspec:\n  redis: {external: {secretRef: {name: redis-url, key: address}}}\n  auth: {algorithm: RS256, secretRef: {name: jwt-pub}}\n",
    );
    let rendered = render_as_reconciled(
        &sc,
        vec![
            secret("redis-url", &[("address", &redis.url())]),
            secret("jwt-pub", &[("public.pem", &pem)]),
        ],
    );
    assert!(
        !rendered.extra_files.is_empty(),
        "RS256 rendered no public key file"
    );
    let (_dir, server) = start(&rendered);
    server.wait_ready(true, Duration::from_secs(15)).await;
    let cfg = get_bearer(
        server.addr(),
        "/webrtc/config",
        &Claims::user("alice").rs256(),
    )
    .await;
    assert_eq!(cfg.status, 200, "{}", cfg.text());
    // The algorithm is pinned: an HS256 token is refused.
    let hs = Claims::user("alice").hs256("whatever-secret-whatever-secret!");
    assert_refused(&server, &hs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_on_config_with_es256_and_turn_is_served_as_specified() {
    let redis = RedisProcess::start();
    let sc = cluster_from_yaml(
        r#"
apiVersion: switchboard.dev/v1alpha1
kind: SignalingCluster
metadata: {name: demo}
spec:
  redis: {keyPrefix: contract}
  ice:
    stunUrls: ["stun:stun.example.com:3478"]
    turnUrls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
    turnSecretRef: {name: coturn}
    credentialTtlSeconds: 600
    iceTransportPolicy: relay
    bundlePolicy: max-bundle
    rtcpMuxPolicy: negotiate
  auth:
    algorithm: ES256
    secretRef: {name: jwt-public-key}
    issuer: https://auth.example.com
    audience: switchboard
  rooms: {maxParticipants: 3, presenceTtlSeconds: 20}
  limits:
    maxMessageBytes: 4096
    ratePerSecond: 80
    rateBurst: 300
    rateBytesPerSecond: 1048576
    rateBytesBurst: 2097152
    maxJsonDepth: 16
    maxMetadataBytes: 2048
    maxSessionSeconds: 86400
    outboundQueueMessages: 512
    outboundQueueBytes: 2097152
    writeBufferBytes: 524288
    pingIntervalSeconds: 15
    pingTimeoutSeconds: 10
    closeTimeoutMs: 2000
    maxUserConnectionsPerRoom: 1
    maxUserConnectionsPerPod: 0
    maxConnections: 5000
    maxConnectionsPerIp: 50
    headerReadTimeoutMs: 5000
    maxHeaderBytes: 8192
  allowedOrigins: ["https://app.example.com"]
"#,
    );
    let pem = std::fs::read_to_string(ec_public_key_path()).expect("EC test key");
    let resolved = Resolved {
        jwt: JwtKey::PublicKeyPem(pem),
        turn_secret: Some("coturn-shared-secret".to_owned()),
        redis_url: redis.url(),
        redis_cluster: false,
        webhook_secrets: Vec::new(),
        resume_secret: None,
    };
    let rendered = config::render(&sc, &resolved).expect("renders");
    let (_dir, server) = start(&rendered);
    server.wait_ready(true, Duration::from_secs(15)).await;

    let good = Claims::user("alice")
        .issuer("https://auth.example.com")
        .audience("switchboard");
    let cfg = get_bearer(server.addr(), "/webrtc/config", &good.es256()).await;
    assert_eq!(cfg.status, 200, "{}", cfg.text());
    let body: Value = cfg.json();
    assert_eq!(body["iceTransportPolicy"], "relay");
    assert_eq!(body["bundlePolicy"], "max-bundle");
    assert_eq!(body["rtcpMuxPolicy"], "negotiate");
    let servers = body["iceServers"].as_array().expect("iceServers").clone();
    let urls: Vec<Value> = servers.iter().map(|s| s["urls"].clone()).collect();
    assert!(
        urls.contains(&json!(["stun:stun.example.com:3478"])),
        "{body}"
    );
    let turn = servers
        .iter()
        .find(|s| s["urls"].to_string().contains("turn:turn.example.com"))
        .unwrap_or_else(|| panic!("no TURN entry in {body}"));
    // coturn REST credentials derived from the rendered shared secret: "<expiry>:<user>".
    let username = turn["username"].as_str().expect("TURN username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().expect("numeric expiry");
    let now = switchboard_e2e::token::now_secs();
    assert!(
        expiry > now && expiry <= now + 600 + 5,
        "ttl 600 s: {expiry} vs {now}"
    );
    assert!(turn["credential"].as_str().is_some_and(|c| !c.is_empty()));

    // issuer and audience from the spec are enforced.
    let wrong_aud = Claims::user("bob")
        .issuer("https://auth.example.com")
        .audience("other");
    assert_refused(&server, &wrong_aud.es256()).await;
    // The algorithm is pinned: an HS256 token is refused.
    assert_refused(&server, &good.hs256("whatever-secret")).await;

    // spec.limits reached the server: a second connection of one user to one room closes
    // 1008 (maxUserConnectionsPerRoom 1)...
    let mut alice = Client::join(server.addr(), "contract", &good.es256()).await;
    let mut second = Client::connect(server.addr(), "contract", &good.es256()).await;
    second.expect_close(1008, "user_room_limit").await;
    // ...and a message over maxMessageBytes closes 1009.
    let big = json!({"type": "chat-message", "payload": {"text": "x".repeat(5000)}});
    alice.send_json(&big).await;
    let (_, close) = alice.collect_until_close(Duration::from_secs(5)).await;
    assert_eq!(close, (1009, "message_too_big".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_redis_cluster_secret_renders_a_config_the_server_runs_on() {
    let cluster = switchboard_e2e::redis_cluster::RedisCluster::start(3, 0);
    let sc = cluster_from_yaml(
        &json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "sharded"},
            "spec": {
                "redis": {
                    "external": {"secretRef": {"name": "redis-seeds"}, "cluster": true},
                    "keyPrefix": "contract-cluster"
                }
            }
        })
        .to_string(),
    );
    // The Secret as a user writes it: seed URLs, comma-separated, spaces allowed.
    let seeds = cluster.urls().replace(',', ", ");
    let rendered = render_as_reconciled(&sc, vec![secret("redis-seeds", &[("url", &seeds)])]);
    assert!(
        rendered.yaml.contains("redis_cluster_urls:"),
        "{}",
        rendered.yaml
    );
    assert!(!rendered.yaml.contains("  url:"), "{}", rendered.yaml);
    let (_dir, server) = start(&rendered);
    server.wait_ready(true, Duration::from_secs(20)).await;
    let health = get(server.addr(), "/webrtc/health").await.json();
    assert_eq!(health["bus"]["kind"], "redis-cluster", "{health}");
    // A participant registers its presence on the shard owning its room's slot.
    let secret = match &rendered
        .yaml
        .lines()
        .find(|l| l.trim_start().starts_with("secret:"))
    {
        Some(line) => line
            .split_once(':')
            .map(|x| x.1.trim().to_owned())
            .unwrap_or_default(),
        None => panic!("no jwt secret in {}", rendered.yaml),
    };
    let _alice = Client::join(
        server.addr(),
        "contract",
        &Claims::user("alice").hs256(&secret),
    )
    .await;
    let key = "contract-cluster:room:{contract}:participants";
    let owner = cluster.master_of(cluster.keyslot(key));
    assert_eq!(
        cluster.command_on(owner, &["HLEN", key]),
        switchboard_e2e::redis::Reply::Integer(1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_webhooks_render_endpoints_the_server_signs_for() {
    let redis = RedisProcess::start();
    let receiver = Receiver::start().await;
    let (all, rooms) = (new_secret(11), new_secret(12));
    let sc = cluster_from_yaml(
        &json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "hooks"},
            "spec": {
                "redis": {"external": {"secretRef": {"name": "redis-url"}}},
                "webhooks": {
                    "endpoints": [
                        {"url": receiver.url("/all"), "secretRef": {"name": "hook-all"}},
                        {"url": receiver.url("/rooms"), "name": "rooms", "secretRef": {"name": "hook-rooms", "key": "whsec"},
                         "events": ["room_started"]}
                    ],
                    "timeoutMs": 5000,
                    "retryHorizonSeconds": 600
                }
            }
        })
        .to_string(),
    );
    let rendered = render_as_reconciled(
        &sc,
        vec![
            secret("redis-url", &[("url", &redis.url())]),
            secret("hook-all", &[("secret", &all)]),
            secret("hook-rooms", &[("whsec", &rooms)]),
        ],
    );
    let (_dir, server) = start(&rendered);
    server.wait_ready(true, Duration::from_secs(15)).await;
    let jwt = match &resolve::resolve(
        &sc,
        &secrets_for(
            &sc,
            vec![
                secret("redis-url", &[("url", &redis.url())]),
                secret("hook-all", &[("secret", &all)]),
                secret("hook-rooms", &[("whsec", &rooms)]),
            ],
        ),
    )
    .expect("resolves")
    .jwt
    {
        JwtKey::Hs256Secret(s) => s.clone(),
        JwtKey::PublicKeyPem(_) => panic!("HS256 expected"),
    };
    let client = Client::join(server.addr(), "hooked", &Claims::user("alice").hs256(&jwt)).await;
    let got = receiver
        .wait_until(
            "room_started on both and the join on /all",
            Duration::from_secs(20),
            |d| {
                d.iter().filter(|r| r.path == "/all").count() >= 2
                    && d.iter().any(|r| r.path == "/rooms")
            },
        )
        .await;
    for r in &got {
        let secret = if r.path == "/all" { &all } else { &rooms };
        assert!(
            verify(secret, &r.id, &r.timestamp, &r.body, &r.signature),
            "{} signed with its endpoint's secret",
            r.path
        );
    }
    let on_rooms: Vec<&str> = got
        .iter()
        .filter(|r| r.path == "/rooms")
        .map(|r| r.kind())
        .collect();
    assert_eq!(on_rooms, ["room_started"], "the event filter");
    client.close().await;
}

/// Alice joins replica `a` (bob is in the room on `b`), loses her connection without a close
/// frame, bob sends her a message, and she comes back on replica `b` with her resume token:
/// the first answer `b` gives her.
async fn resume_on_the_other_replica(a: &ServerProcess, b: &ServerProcess, room: &str) -> Event {
    let mut bob = Client::join(b.addr(), room, &Claims::user("bob").rs256()).await;
    let alice = Client::join(a.addr(), room, &Claims::user("alice").rs256()).await;
    let (alice_id, alice_token) = (alice.pid(), alice.resume_token());
    let joined = bob.expect_type("user-joined").await;
    assert_eq!(joined["payload"]["participant_id"], alice_id.as_str());
    alice.drop_connection();
    bob.send_json(&json!({"type": "ice-candidate", "to": alice_id, "seq": 1, "payload": {"n": 1}}))
        .await;
    assert_eq!(bob.expect_type("ack").await["seq"], 1);
    let path = resume_path(room, &Claims::user("alice").rs256(), &alice_token, 0);
    let mut alice = Client::connect_with(b.addr(), room, &path, &ConnectOptions::default()).await;
    let first = alice.next_event(Duration::from_secs(10)).await;
    if let Event::Json(state) = &first {
        assert_eq!(state["type"], "room-state", "{state}");
        assert_eq!(state["payload"]["resumed"], true, "{state}");
        assert_eq!(
            state["payload"]["self"]["participant_id"],
            alice_id.as_str()
        );
        // What she missed while away, then nothing else: the room saw no leave or join.
        let missed = alice.recv_json().await;
        assert_eq!(missed["type"], "ice-candidate", "{missed}");
        assert_eq!(missed["payload"]["n"], 1, "{missed}");
        match bob.next_event(Duration::from_millis(500)).await {
            Event::Timeout => {}
            other => panic!("bob saw a presence change: {other:?}"),
        }
    }
    first
}

/// With a public JWT key the servers share no secret to derive the resume key from: the
/// operator generates one (`<name>-resume`) and renders it, with the spec's resume settings,
/// into the config every replica reads, so a client resumes on any replica. The control: the
/// same config without that key (each server draws its own) refuses the other replica's token.
#[tokio::test(flavor = "multi_thread")]
async fn spec_resume_with_an_rs256_key_lets_a_client_resume_on_another_replica() {
    let redis = RedisProcess::start();
    let pem = std::fs::read_to_string(rsa_public_key_path()).expect("RSA test key");
    let sc = cluster_from_yaml(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {name: signal}\nspec:\n  redis: {external: {secretRef: {name: redis-url}}}\n  auth: {algorithm: RS256, secretRef: {name: jwt-pub}}\n  resume: {graceSeconds: 20, inboxMessages: 64, inboxBytes: 65536}\n",
    );
    let user = || {
        vec![
            secret("redis-url", &[("url", &redis.url())]),
            secret("jwt-pub", &[("public.pem", &pem)]),
        ]
    };
    let generated = secrets_for(&sc, vec![]);
    let key = generated
        .get("signal-resume")
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("secret"))
        .map(|b| String::from_utf8(b.0.clone()).expect("hex"))
        .expect("an RS256 cluster with resume on gets a generated resume key");
    let rendered = render_as_reconciled(&sc, user());
    assert!(
        rendered.yaml.ends_with(&format!(
            "\nresume:\n  grace_secs: 20\n  inbox_messages: 64\n  inbox_bytes: 65536\n  secret: {key}\n"
        )),
        "{}",
        rendered.yaml
    );
    let (_dir_a, a) = start(&rendered);
    let (_dir_b, b) = start(&rendered);
    a.wait_ready(true, Duration::from_secs(15)).await;
    b.wait_ready(true, Duration::from_secs(15)).await;
    let first = resume_on_the_other_replica(&a, &b, "shared-key").await;
    assert!(matches!(first, Event::Json(_)), "resume refused: {first:?}");

    // The control: what a replica does without the rendered key.
    let mut resolved = resolve::resolve(&sc, &secrets_for(&sc, user())).expect("resolves");
    resolved.resume_secret = None;
    let keyless = config::render(&sc, &resolved).expect("renders");
    let (_dir_c, c) = start(&keyless);
    let (_dir_d, d) = start(&keyless);
    c.wait_ready(true, Duration::from_secs(15)).await;
    d.wait_ready(true, Duration::from_secs(15)).await;
    let first = resume_on_the_other_replica(&c, &d, "own-keys").await;
    assert_eq!(
        first,
        Event::Close(Some((1008, "resume_invalid".to_owned()))),
        "a replica with its own key accepted another's token"
    );
}
