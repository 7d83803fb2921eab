//! Reaching Redis the way production does: an ACL user with a password in `REDIS_URL`
//! (confined to the cluster's key prefix, which the key layout must honour), a wrong password
//! (not ready, never logged), and `rediss://` with a certificate from a private CA
//! (`SSL_CERT_FILE`); the ACL user on a Redis Cluster too. Real redis-server (built with TLS, as Debian's is) and real servers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::client::Client;
use switchboard_e2e::redis::{free_port, RedisProcess, Reply};
use switchboard_e2e::server::{ServerOptions, ServerProcess};
use switchboard_e2e::token::Claims;

const SECRET: &str = "e2e-redis-security-secret-0123456789abcdef";
const REDIS_PASSWORD: &str = "n0t-in-the-logs-4711";

fn token(user: &str) -> String {
    Claims::user(user).hs256(SECRET)
}

fn server(url: &str, prefix: &str, instance: &str) -> ServerProcess {
    ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", url)
        .env("REDIS_KEY_PREFIX", prefix)
        .env("SWITCHBOARD_INSTANCE_ID", instance)
        .env("WEBRTC_ROOM_PRESENCE_TTL", "3")
        .start()
}

/// Two instances relay to each other (proves commands, scripts and pub/sub all work).
async fn assert_cluster_relays(one: &ServerProcess, two: &ServerProcess, room: &str) {
    let mut a = Client::join(one.addr(), room, &token("alice")).await;
    let mut b = Client::join(two.addr(), room, &token("bob")).await;
    let joined = a.expect_type("user-joined").await;
    assert_eq!(joined["payload"]["participant_id"], b.pid().as_str());
    a.send_msg("offer", Some(&b.pid()), json!({"sdp": "x"}))
        .await;
    let offer = b.expect_type("offer").await;
    assert_eq!(offer["sender_id"], a.pid().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_password_confined_to_its_prefix() {
    let redis = RedisProcess::start();
    // Only keys and channels under `team-a:` for this user: the whole layout must fit.
    let reply = redis.command(&[
        "ACL",
        "SETUSER",
        "switchboard",
        "on",
        &format!(">{REDIS_PASSWORD}"),
        "resetkeys",
        "~team-a:*",
        "resetchannels",
        "&team-a:*",
        "+@all",
    ]);
    assert_eq!(reply, Reply::Status("OK".into()));
    let url = format!(
        "redis://switchboard:{REDIS_PASSWORD}@127.0.0.1:{}/",
        redis.port()
    );
    let one = server(&url, "team-a", "acl-1");
    let two = server(&url, "team-a", "acl-2");
    one.wait_ready(true, Duration::from_secs(10)).await;
    two.wait_ready(true, Duration::from_secs(10)).await;
    assert_cluster_relays(&one, &two, "acl-room").await;

    // The same user with another prefix is refused by Redis: never ready, no crash.
    let outside = server(&url, "team-b", "acl-3");
    tokio::time::sleep(Duration::from_secs(3)).await;
    outside.wait_ready(false, Duration::from_secs(1)).await;

    // A wrong password: not ready, and the password appears in no log line.
    let wrong = server(
        &format!(
            "redis://switchboard:wrong-{REDIS_PASSWORD}@127.0.0.1:{}/",
            redis.port()
        ),
        "team-a",
        "acl-4",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    wrong.wait_ready(false, Duration::from_secs(1)).await;
    for s in [&one, &two, &outside, &wrong] {
        let logs = s.stderr_lines().join("\n");
        assert!(
            !logs.contains(REDIS_PASSWORD),
            "the Redis password leaked into the logs:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_password_on_a_redis_cluster() {
    let cluster = switchboard_e2e::redis_cluster::RedisCluster::start(3, 0);
    // ACLs are per node: the same confined user on every node.
    for port in cluster.ports() {
        let reply = cluster.command_on(
            port,
            &[
                "ACL",
                "SETUSER",
                "switchboard",
                "on",
                &format!(">{REDIS_PASSWORD}"),
                "resetkeys",
                "~team-a:*",
                "resetchannels",
                "&team-a:*",
                "+@all",
            ],
        );
        assert_eq!(reply, Reply::Status("OK".into()));
    }
    let seeds = cluster
        .ports()
        .iter()
        .map(|p| format!("redis://switchboard:{REDIS_PASSWORD}@127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let start = |prefix: &str, instance: &str| {
        ServerOptions::with_secret(SECRET)
            .env("REDIS_CLUSTER_URLS", &seeds)
            .env("REDIS_KEY_PREFIX", prefix)
            .env("SWITCHBOARD_INSTANCE_ID", instance)
            .env("WEBRTC_ROOM_PRESENCE_TTL", "3")
            .start()
    };
    let one = start("team-a", "acl-c1");
    let two = start("team-a", "acl-c2");
    one.wait_ready(true, Duration::from_secs(20)).await;
    two.wait_ready(true, Duration::from_secs(20)).await;
    assert_cluster_relays(&one, &two, "acl-room").await;
    // Outside its prefix the user may not publish its canaries: never ready.
    let outside = start("team-b", "acl-c3");
    tokio::time::sleep(Duration::from_secs(3)).await;
    outside.wait_ready(false, Duration::from_secs(1)).await;
    for s in [&one, &two, &outside] {
        let logs = s.stderr_lines().join("\n");
        assert!(
            !logs.contains(REDIS_PASSWORD),
            "the Redis password leaked into the logs:\n{logs}"
        );
    }
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it (openssl CLI).
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("openssl not runnable (install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=switchboard test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .unwrap_or_else(|e| panic!("write san.ext: {e}"));
    run(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("temp dir");
    make_certs(certs.path());
    let tls_port = free_port();
    let path = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    let redis = RedisProcess::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("redis.pem"),
        "--tls-key-file",
        &path("redis.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let tls_server = |instance: &str| {
        ServerOptions::with_secret(SECRET)
            .env("REDIS_URL", &url)
            .env("SWITCHBOARD_INSTANCE_ID", instance)
            .env("WEBRTC_ROOM_PRESENCE_TTL", "3")
            // rustls-native-certs reads the trusted roots from here.
            .env("SSL_CERT_FILE", path("ca.pem"))
            .start()
    };
    let one = tls_server("tls-1");
    let two = tls_server("tls-2");
    one.wait_ready(true, Duration::from_secs(10)).await;
    two.wait_ready(true, Duration::from_secs(10)).await;
    assert_cluster_relays(&one, &two, "tls-room").await;
    // Both instances registered over the TLS port in this Redis.
    assert_eq!(
        redis.command(&["SCARD", "switchboard:instances"]),
        Reply::Integer(2)
    );

    // Without the private CA (system roots only) the certificate is not trusted: never ready.
    let untrusting = ServerOptions::with_secret(SECRET)
        .env("REDIS_URL", &url)
        .env("SWITCHBOARD_INSTANCE_ID", "tls-3")
        .start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    untrusting.wait_ready(false, Duration::from_secs(1)).await;
}
