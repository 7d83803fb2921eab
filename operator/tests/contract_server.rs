//! Contract between the operator and the server: the `config.yaml` the operator renders (from
//! a spec and resolved Secrets, exactly as a reconcile would) is fed to the real
//! `switchboard-server` binary, which must start with it, reach the Redis it names and answer
//! `/webrtc/health/ready` with 200. Needs the server binary (built into the same target dir,
//! or `SWITCHBOARD_SERVER_BIN`) and `redis-server` on PATH.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use serde_json::json;
use switchboard_e2e::redis::RedisProcess;
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::config::{self, RenderedConfig};
use switchboard_operator::resolve;
use switchboard_operator::resources::{self, GeneratedSecret};

mod common;

/// `switchboard-server` next to this test's target dir (`target/<profile>/deps/<test>` →
/// `target/<profile>/switchboard-server`), or `SWITCHBOARD_SERVER_BIN`.
fn server_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SWITCHBOARD_SERVER_BIN") {
        let p = PathBuf::from(p);
        ensure!(
            p.exists(),
            "SWITCHBOARD_SERVER_BIN={} does not exist",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("switchboard-server"))
        .ok_or_else(|| anyhow!("cannot locate the target dir from {}", exe.display()))?;
    ensure!(
        candidate.exists(),
        "no switchboard-server at {}: build it first with `cargo build -p switchboard-server` \
         (same CARGO_TARGET_DIR) or set SWITCHBOARD_SERVER_BIN",
        candidate.display()
    );
    Ok(candidate)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("prod".to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Renders the config as a reconcile would: generated Secrets from random bytes, the user's
/// Secrets as given, then `resolve` + `render`.
fn render(sc: &SignalingCluster, user: Vec<Secret>) -> Result<RenderedConfig> {
    let mut fetched: BTreeMap<String, Secret> = BTreeMap::new();
    for (i, kind) in resources::generated_secrets_needed(sc)
        .into_iter()
        .enumerate()
    {
        let bytes = vec![0x41 + i as u8; GeneratedSecret::RANDOM_BYTES];
        let s = resources::desired_generated_secret(sc, kind, &bytes)?;
        fetched.insert(s.name_any(), s);
    }
    for s in user {
        fetched.insert(s.name_any(), s);
    }
    let resolved = resolve::resolve(sc, &fetched).map_err(|e| anyhow!("resolve: {e}"))?;
    Ok(config::render(sc, &resolved)?)
}

/// Starts the server with the rendered files laid out as the pod mounts them (the mount dir
/// replaced by a temp dir) and returns it with its address. Only `--listen` is overridden:
/// the rendered `0.0.0.0:8080` would collide on a shared machine.
fn start_server(dir: &Path, rendered: &RenderedConfig) -> Result<(Killed, SocketAddr, PathBuf)> {
    let mount = dir.display().to_string();
    let yaml = rendered.yaml.replace(config::MOUNT_DIR, &mount);
    std::fs::write(dir.join(config::CONFIG_FILE), &yaml)?;
    for (name, content) in &rendered.extra_files {
        std::fs::write(dir.join(name), content)?;
    }
    let log = dir.join("server.log");
    let mut child = Command::new(server_bin()?)
        .arg("--config")
        .arg(dir.join(config::CONFIG_FILE))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting switchboard-server")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let guard = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(a) => a.parse().context("parsing the listening address")?,
        Err(_) => bail!(
            "switchboard-server did not print `listening on` within 15 s with the rendered config; stderr:\n{}\nconfig:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            redact(&yaml)
        ),
    };
    Ok((guard, addr, log))
}

/// The rendered YAML holds secrets; failure output shows only its keys.
fn redact(yaml: &str) -> String {
    yaml.lines()
        .map(|l| match l.split_once(':') {
            Some((k, _)) => format!("{k}: …"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_ready(addr: SocketAddr, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = common::http::get(addr, "/webrtc/health/ready").await;
        if let Ok((200, _)) = last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "/webrtc/health/ready not 200 within 20 s (last: {last:?}); server log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cluster(spec: serde_json::Value) -> Result<SignalingCluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "SignalingCluster",
        "metadata": {"name": "signal", "namespace": "prod", "uid": "0b6c2f0e-2a44-4a55-9a0b-7e0a1b2c3d4e", "generation": 1},
        "spec": spec
    }))?)
}

fn temp_dir(tag: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("switchboard-contract-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[tokio::test]
async fn rendered_config_with_external_redis_starts_a_ready_server() -> Result<()> {
    let dir = temp_dir("external")?;
    let redis = RedisProcess::start();
    let redis_port = redis.port();
    // Everything the renderer knows about, so every key reaches the server's parser.
    let sc = cluster(json!({
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
    }))?;
    let rendered = render(
        &sc,
        vec![secret(
            "redis-url",
            "url",
            &format!("redis://127.0.0.1:{redis_port}/0"),
        )],
    )?;
    ensure!(
        rendered.hash == config::sha256_hex(rendered.yaml.as_bytes()),
        "hash is not the sha256 of the YAML"
    );
    let (_server, addr, log) = start_server(&dir, &rendered)?;
    wait_ready(addr, &log).await?;

    // The server runs with what the operator meant: Redis bus, auth enforced.
    let (code, body) = common::http::get(addr, "/webrtc/health").await?;
    ensure!(code == 200, "/webrtc/health: {code} {body}");
    ensure!(
        body.contains("redis"),
        "/webrtc/health does not report the Redis bus: {body}"
    );
    let (code, body) = common::http::get(addr, "/webrtc/config").await?;
    ensure!(code == 401, "/webrtc/config without a token: {code} {body}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn rendered_config_with_an_rs256_public_key_starts() -> Result<()> {
    let dir = temp_dir("rs256")?;
    let redis = RedisProcess::start();
    let redis_port = redis.port();
    // A real RSA public key, made by openssl for this test.
    let key = dir.join("k.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?
        .success();
    ensure!(ok, "openssl genrsa failed");
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .stderr(Stdio::null())
        .output()?;
    let pem = String::from_utf8(out.stdout)?;
    ensure!(pem.contains("PUBLIC KEY"), "openssl produced no public key");

    let sc = cluster(json!({
        "redis": {"external": {"secretRef": {"name": "redis-url", "key": "address"}}},
        "auth": {"algorithm": "RS256", "secretRef": {"name": "jwt-pub"}}
    }))?;
    let rendered = render(
        &sc,
        vec![
            secret(
                "redis-url",
                "address",
                &format!("redis://127.0.0.1:{redis_port}"),
            ),
            secret("jwt-pub", "public.pem", &pem),
        ],
    )?;
    ensure!(
        !rendered.extra_files.is_empty(),
        "RS256 rendered no public key file"
    );
    let (_server, addr, log) = start_server(&dir, &rendered)?;
    wait_ready(addr, &log).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
