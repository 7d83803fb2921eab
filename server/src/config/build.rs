//! Builds the typed [`Config`] from a [`Reader`]: reads every setting
//! constant and checks the rules that span settings (a JWT key that matches
//! the algorithm, `relay` needs a TURN URL, drain timeout covers the delay).

use rand::Rng;

use super::reader::{Reader, SecretSetting};
use super::settings::*;
use super::{
    Config, ConnectionsConfig, IceConfig, JwtAlgorithm, JwtConfig, JwtKey, Limits, RedisConfig,
    ResumeConfig, RoomsConfig, Secret, ShutdownConfig, SigningConfig, SigningKey, WebhookConfig,
    WebhookEndpoint,
};
use crate::webhook::{EventFilter, SigningSecret};

/// The shortest HS256 secret accepted outside `--dev`: RFC 7518 3.2 wants a
/// key at least as long as the hash output (256 bits); a shorter one can be
/// brute-forced from any token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

pub fn build(r: &mut Reader<'_>, dev: bool) -> Config {
    let listen = r.get(&LISTEN);
    let log_format = r.get(&LOG_FORMAT);
    let instance_id = r.opt(&INSTANCE_ID).unwrap_or_else(default_instance_id);
    let jwt = build_jwt(r, dev);
    let ice = build_ice(r);
    let rooms = RoomsConfig {
        max_participants: r.get(&MAX_PARTICIPANTS),
        max_user_connections: per_user_cap(r, &MAX_USER_CONNECTIONS_PER_ROOM, dev),
        presence_ttl: r.get(&PRESENCE_TTL),
    };
    let limits = Limits {
        max_message_bytes: r.get(&MAX_MESSAGE_BYTES),
        rate_limit_per_second: r.get(&RATE_LIMIT_PER_SECOND),
        rate_limit_burst: r.get(&RATE_LIMIT_BURST),
        rate_limit_bytes_per_second: r.get(&RATE_LIMIT_BYTES_PER_SECOND),
        rate_limit_bytes_burst: r.get(&RATE_LIMIT_BYTES_BURST),
        max_metadata_bytes: r.get(&MAX_METADATA_BYTES),
        max_json_depth: r.get(&MAX_JSON_DEPTH),
        max_session: r.get(&MAX_SESSION),
        max_user_connections_per_instance: per_user_cap(r, &MAX_USER_CONNECTIONS_PER_INSTANCE, dev),
        outbound_queue_messages: r.get(&OUTBOUND_QUEUE_MESSAGES),
        outbound_queue_bytes: r.get(&OUTBOUND_QUEUE_BYTES),
        ping_interval: r.get(&PING_INTERVAL),
        ping_timeout: r.get(&PING_TIMEOUT),
        write_buffer_bytes: r.get(&WRITE_BUFFER_BYTES),
        close_timeout: r.get(&CLOSE_TIMEOUT),
    };
    if limits.write_buffer_bytes < limits.max_message_bytes.saturating_mul(2) {
        // A frame that cannot fit the write buffer would close every reader it is sent to.
        r.err(
            &WRITE_BUFFER_BYTES.meta,
            format!(
                "must be at least twice {} ({} bytes), or one large message cannot be written",
                MAX_MESSAGE_BYTES.meta.key, limits.max_message_bytes
            ),
        );
    }
    let allowed_origins = r.opt(&ALLOWED_ORIGINS).flatten();
    let redis = build_redis(r, dev);
    let shutdown = ShutdownConfig {
        drain_delay: r.get(&DRAIN_DELAY),
        drain_window: r.get(&DRAIN_WINDOW),
        drain_timeout: r.get(&DRAIN_TIMEOUT),
    };
    if shutdown.drain_timeout < shutdown.drain_delay {
        // The hard exit would come before any client was told to reconnect.
        r.err(
            &DRAIN_TIMEOUT.meta,
            format!(
                "must be at least {} ({} ms), or the process exits before telling clients to reconnect",
                DRAIN_DELAY.meta.key,
                shutdown.drain_delay.as_millis()
            ),
        );
    }
    let connections = ConnectionsConfig {
        max: r.get(&MAX_CONNECTIONS),
        max_per_ip: r.get(&MAX_CONNECTIONS_PER_IP),
        header_read_timeout: r.get(&HEADER_READ_TIMEOUT),
        max_header_bytes: r.get(&MAX_HEADER_BYTES),
        body_read_timeout: r.get(&BODY_READ_TIMEOUT),
        trusted_proxies: r.opt(&TRUSTED_PROXIES).unwrap_or_default(),
    };
    let webhooks = build_webhooks(r);
    let resume = ResumeConfig {
        grace: r.get(&RESUME_GRACE),
        inbox_messages: r.get(&RESUME_INBOX_MESSAGES),
        inbox_bytes: r.get(&RESUME_INBOX_BYTES),
        secret: r.secret(&RESUME_SECRET, &RESUME_SECRET_FILE),
    };
    Config {
        listen,
        log_format,
        instance_id,
        dev,
        jwt,
        ice,
        rooms,
        limits: std::sync::Arc::new(limits),
        allowed_origins,
        redis,
        shutdown,
        connections,
        webhooks,
        resume,
    }
}

/// The webhook endpoints: `webhooks.urls` with the shared secret, then `webhooks.endpoints`
/// each with its own secret (or the shared one) and filter; names and URLs must be distinct.
fn build_webhooks(r: &mut Reader<'_>) -> WebhookConfig {
    let urls = r.get(&WEBHOOK_URLS);
    // Set but invalid counts as set: its own error is enough.
    let urls_set = r.is_set(&WEBHOOK_URLS.meta);
    let endpoints_set = r.is_set(&WEBHOOK_ENDPOINTS.meta);
    let shared = match r.sourced_secret(&WEBHOOK_SECRET, &WEBHOOK_SECRET_FILE) {
        SecretSetting::Set(s, from) => match SigningSecret::parse(s.expose()) {
            Ok(secret) => Some(secret),
            Err(e) => {
                r.err(&from, e.to_string());
                None
            }
        },
        SecretSetting::Unset | SecretSetting::Failed => None,
    };
    let shared_set = r.is_set(&WEBHOOK_SECRET.meta) || r.is_set(&WEBHOOK_SECRET_FILE.meta);
    let events = r.opt(&WEBHOOK_EVENTS);
    let specs = r.opt(&WEBHOOK_ENDPOINTS).unwrap_or_default();
    let mut endpoints = Vec::new();
    if !urls.is_empty() && shared.is_none() && !shared_set {
        r.err(
            &WEBHOOK_SECRET.meta,
            "webhooks.urls needs a signing secret: set webhooks.secret (SWITCHBOARD_WEBHOOK_SECRET) or webhooks.secret_file (SWITCHBOARD_WEBHOOK_SECRET_FILE) to whsec_ + base64 of 24 to 64 random bytes",
        );
    }
    if !urls_set && events.is_some() {
        r.err(&WEBHOOK_EVENTS.meta, "filters webhooks.urls, which is empty; an entry of webhooks.endpoints has its own events");
    }
    if !urls_set && !endpoints_set && shared_set {
        r.err(
            &WEBHOOK_SECRET.meta,
            "set, but no webhook endpoint is configured (webhooks.urls or webhooks.endpoints)",
        );
    }
    for url in urls {
        if let Some(secret) = &shared {
            endpoints.push(WebhookEndpoint {
                name: default_name(&url),
                url: Secret::new(url),
                secret: secret.clone(),
                events: events.unwrap_or(EventFilter::ALL),
            });
        }
    }
    for (i, spec) in specs.into_iter().enumerate() {
        let at = |e: &str| format!("endpoint {}: {e}", i + 1);
        let secret_text = match (&spec.secret, &spec.secret_file) {
            (Some(s), _) => Some(s.expose().to_owned()),
            (None, Some(path)) => match r.files.read(path) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.err(
                        &WEBHOOK_ENDPOINTS.meta,
                        at(&format!("cannot read {path}: {e}")),
                    );
                    continue;
                }
            },
            (None, None) => None,
        };
        let secret = match secret_text {
            Some(t) => match SigningSecret::parse(&t) {
                Ok(s) => s,
                Err(e) => {
                    r.err(&WEBHOOK_ENDPOINTS.meta, at(&format!("secret: {e}")));
                    continue;
                }
            },
            None => match &shared {
                Some(s) => s.clone(),
                None => {
                    if !shared_set {
                        r.err(
                            &WEBHOOK_ENDPOINTS.meta,
                            at("no secret: set its secret or secret_file, or webhooks.secret"),
                        );
                    }
                    continue;
                }
            },
        };
        endpoints.push(WebhookEndpoint {
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| default_name(spec.url.expose())),
            url: spec.url,
            secret,
            events: spec
                .events
                .map_or(EventFilter::ALL, |k| EventFilter::of(&k)),
        });
    }
    for (i, a) in endpoints.iter().enumerate() {
        for b in &endpoints[i + 1..] {
            if a.url == b.url {
                r.err(
                    &WEBHOOK_ENDPOINTS.meta,
                    format!("endpoint {} is configured twice", a.name),
                );
            } else if a.name == b.name {
                r.err(
                    &WEBHOOK_ENDPOINTS.meta,
                    format!(
                        "two endpoints are named {}; give them distinct names",
                        a.name
                    ),
                );
            }
        }
    }
    let retry_initial = r.get(&WEBHOOK_RETRY_INITIAL);
    let retry_max = r.get(&WEBHOOK_RETRY_MAX);
    if retry_max < retry_initial {
        r.err(
            &WEBHOOK_RETRY_MAX.meta,
            format!(
                "must be at least {} ({} ms)",
                WEBHOOK_RETRY_INITIAL.meta.key,
                retry_initial.as_millis()
            ),
        );
    }
    WebhookConfig {
        endpoints,
        timeout: r.get(&WEBHOOK_TIMEOUT),
        retry_horizon: r.get(&WEBHOOK_RETRY_HORIZON),
        retry_initial,
        retry_max,
        max_in_flight: r.get(&WEBHOOK_MAX_IN_FLIGHT),
    }
}

/// An endpoint's name when none is configured: host, port and path of its URL (no query,
/// no credentials), e.g. `hooks.example.com/switchboard`.
fn default_name(url: &str) -> String {
    match url.parse::<hyper::http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let path = uri.path().trim_end_matches('/');
            format!("{host}{port}{path}")
        }
        Err(_) => "webhook".to_owned(),
    }
}

/// A per-user connection cap. `--dev` prints one token (user `dev`) that scripts and local
/// experiments use for any number of connections, so there it is off unless configured
/// explicitly.
fn per_user_cap(r: &mut Reader<'_>, setting: &Setting<Option<usize>>, dev: bool) -> Option<usize> {
    let cap = r.get(setting);
    if dev && !r.is_set(&setting.meta) {
        return None;
    }
    cap
}

/// A random instance id suffix keeps two pods with the same hostname apart.
fn default_instance_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_')
        .collect();
    let host = if host.is_empty() {
        "switchboard".to_owned()
    } else {
        host
    };
    format!("{host}-{:06x}", rand::rng().random_range(0..0x100_0000u32))
}

/// A fresh random HS256 secret for `--dev`.
pub fn random_secret() -> Secret {
    let bytes: [u8; 32] = rand::rng().random();
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn build_redis(r: &mut Reader<'_>, dev: bool) -> RedisConfig {
    let url = r.secret(&REDIS_URL, &REDIS_URL_FILE);
    if let Some(url) = &url {
        let u = url.expose();
        // Never echo the URL: it may carry a password.
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            r.err(&REDIS_URL.meta, "expected a redis:// or rediss:// URL");
        } else if redis::Client::open(u).is_err() {
            // Parsing only; no connection is made here.
            r.err(
                &REDIS_URL.meta,
                "not a valid Redis URL (check host, port and database)",
            );
        }
    }
    let cluster_urls = r.opt(&REDIS_CLUSTER_URLS);
    if let Some(urls) = &cluster_urls {
        let exposed: Vec<&str> = urls.iter().map(Secret::expose).collect();
        if url.is_some() {
            r.err(
                &REDIS_CLUSTER_URLS.meta,
                format!(
                    "set either {} (one Redis) or {} (a Redis Cluster), not both",
                    REDIS_URL.meta.key, REDIS_CLUSTER_URLS.meta.key
                ),
            );
        } else if redis::cluster::ClusterClient::new(exposed).is_err() {
            // Parsing only (the seeds must agree on user, password and TLS); no connection.
            // The library's message may quote a URL, hence a fixed one.
            r.err(
                &REDIS_CLUSTER_URLS.meta,
                "not valid Redis Cluster seeds (check each URL's host and port, and that all carry the same user, password and scheme)",
            );
        }
    }
    RedisConfig {
        // --dev always uses the in-process bus.
        url: if dev { None } else { url },
        cluster_urls: if dev { None } else { cluster_urls },
        key_prefix: r.get(&REDIS_KEY_PREFIX),
        publish_timeout: r.get(&REDIS_PUBLISH_TIMEOUT),
    }
}

fn build_jwt(r: &mut Reader<'_>, dev: bool) -> JwtConfig {
    let algorithm = r.get(&JWT_ALGORITHM);
    let secret = r.sourced_secret(&JWT_SECRET, &JWT_SECRET_FILE);
    let public_key_path = r.opt(&JWT_PUBLIC_KEY_FILE);
    let issuer = r.opt(&JWT_ISSUER);
    let audience = r.opt(&JWT_AUDIENCE);
    if dev {
        // --dev pins HS256 with a secret nobody else knows; the token printed
        // at start-up is the way in.
        return JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Secret(random_secret()),
            issuer,
            audience,
        };
    }
    let key = match algorithm {
        JwtAlgorithm::Hs256 => {
            if public_key_path.is_some() {
                r.err(&JWT_PUBLIC_KEY_FILE.meta, "only used with jwt.algorithm RS256 or ES256; HS256 needs jwt.secret or jwt.secret_file");
            }
            hs256_secret(r, secret, "jwt.public_key_file; or run with --dev").map(JwtKey::Secret)
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            refuse_secret(r, &secret, algorithm, "jwt.public_key_file");
            match public_key_path {
                Some(path) => {
                    pem_key(r, algorithm, KeySide::Public, &path).map(JwtKey::PublicKeyPem)
                }
                None => {
                    r.err(
                        &JWT_PUBLIC_KEY_FILE.meta,
                        format!(
                            "no JWT key configured: jwt.algorithm {} needs a PEM public key file",
                            algorithm.as_str()
                        ),
                    );
                    None
                }
            }
        }
    };
    JwtConfig {
        algorithm,
        // Stands in for a key that failed; its error is already recorded.
        key: key.unwrap_or_else(|| JwtKey::Secret(Secret::new(String::new()))),
        issuer,
        audience,
    }
}

/// The signing side of the JWT settings, for `switchboard-server token`.
/// Only the `jwt.*` settings are read: minting needs nothing else.
pub fn build_signing(r: &mut Reader<'_>) -> SigningConfig {
    let algorithm = r.get(&JWT_ALGORITHM);
    let secret = r.sourced_secret(&JWT_SECRET, &JWT_SECRET_FILE);
    let public_key_path = r.opt(&JWT_PUBLIC_KEY_FILE);
    let private_key_path = r.opt(&JWT_PRIVATE_KEY_FILE);
    let issuer = r.opt(&JWT_ISSUER);
    let audience = r.opt(&JWT_AUDIENCE);
    let verify = |key| JwtConfig {
        algorithm,
        key,
        issuer: issuer.clone(),
        audience: audience.clone(),
    };
    let (key, verify) = match algorithm {
        JwtAlgorithm::Hs256 => {
            if private_key_path.is_some() {
                r.err(&JWT_PRIVATE_KEY_FILE.meta, "only used with jwt.algorithm RS256 or ES256; HS256 signs with jwt.secret or jwt.secret_file");
            }
            let secret = hs256_secret(r, secret, "jwt.private_key_file");
            let check = secret.clone().map(|s| verify(JwtKey::Secret(s)));
            (secret.map(SigningKey::Secret), check)
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            refuse_secret(r, &secret, algorithm, "jwt.private_key_file");
            let check = public_key_path
                .and_then(|path| pem_key(r, algorithm, KeySide::Public, &path))
                .map(|pem| verify(JwtKey::PublicKeyPem(pem)));
            let key = match private_key_path {
                Some(path) => pem_key(r, algorithm, KeySide::Private, &path).map(Secret::new),
                None => {
                    r.err(
                        &JWT_PRIVATE_KEY_FILE.meta,
                        format!(
                            "no signing key: jwt.algorithm {} signs with a PEM private key; the server itself only needs the public key",
                            algorithm.as_str()
                        ),
                    );
                    None
                }
            };
            (key.map(SigningKey::PrivateKeyPem), check)
        }
    };
    SigningConfig {
        algorithm,
        // Stands in for a key that failed; its error is already recorded.
        key: key.unwrap_or_else(|| SigningKey::Secret(Secret::new(String::new()))),
        issuer,
        audience,
        verify,
    }
}

/// A secret with RS256/ES256 is a mistake worth reporting.
fn refuse_secret(r: &mut Reader<'_>, secret: &SecretSetting, algorithm: JwtAlgorithm, need: &str) {
    if matches!(secret, SecretSetting::Set(..)) {
        r.err(
            &JWT_SECRET.meta,
            format!(
                "not used with jwt.algorithm {}; set {need}",
                algorithm.as_str()
            ),
        );
    }
}

/// The HS256 secret, at least [`MIN_HS256_SECRET_BYTES`] long; `other_key`
/// names the RS256/ES256 alternative when none is configured.
fn hs256_secret(r: &mut Reader<'_>, secret: SecretSetting, other_key: &str) -> Option<Secret> {
    match secret {
        SecretSetting::Set(s, from) => {
            let len = s.expose().len();
            if len < MIN_HS256_SECRET_BYTES {
                // The length only: never the secret itself.
                r.err(
                    &from,
                    format!(
                        "HS256 secret too short ({len} bytes): use at least {MIN_HS256_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 48`"
                    ),
                );
            }
            Some(s)
        }
        SecretSetting::Failed => None,
        SecretSetting::Unset => {
            r.err(&JWT_SECRET.meta, format!("no JWT key configured: set jwt.secret (JWT_SECRET) or jwt.secret_file (JWT_SECRET_FILE), or jwt.algorithm RS256/ES256 with {other_key}"));
            None
        }
    }
}

/// Which half of a key pair a key file holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeySide {
    /// `jwt.public_key_file`: the server verifies with it.
    Public,
    /// `jwt.private_key_file`: `switchboard-server token` signs with it.
    Private,
}

/// The PEM key at `path`, checked to be one `algorithm` can use: a public key's type, RSA
/// size and curve first, each mistake with its own reason, then that it parses. An unreadable
/// or unusable file is an error on its setting naming the kind of key expected.
fn pem_key(
    r: &mut Reader<'_>,
    algorithm: JwtAlgorithm,
    side: KeySide,
    path: &str,
) -> Option<String> {
    let (setting, side_name) = match side {
        KeySide::Public => (&JWT_PUBLIC_KEY_FILE.meta, "public"),
        KeySide::Private => (&JWT_PRIVATE_KEY_FILE.meta, "private"),
    };
    let pem = match r.files.read(path) {
        Ok(pem) => pem,
        Err(e) => {
            r.err(setting, format!("cannot read {path}: {e}"));
            return None;
        }
    };
    if side == KeySide::Public {
        if let Err(problem) = crate::auth::check_public_key(algorithm, &pem) {
            r.err(setting, format!("{path} {problem}"));
            return None;
        }
    }
    let rsa = algorithm == JwtAlgorithm::Rs256;
    let bytes = pem.as_bytes();
    let parses = match side {
        KeySide::Public if rsa => jsonwebtoken::DecodingKey::from_rsa_pem(bytes).is_ok(),
        KeySide::Public => jsonwebtoken::DecodingKey::from_ec_pem(bytes).is_ok(),
        KeySide::Private if rsa => jsonwebtoken::EncodingKey::from_rsa_pem(bytes).is_ok(),
        KeySide::Private => jsonwebtoken::EncodingKey::from_ec_pem(bytes).is_ok(),
    };
    if !parses {
        let kind = if rsa { "an RSA" } else { "an EC P-256" };
        r.err(
            setting,
            format!("{path} is not {kind} {side_name} key in PEM format"),
        );
        return None;
    }
    Some(pem)
}

fn build_ice(r: &mut Reader<'_>) -> IceConfig {
    let stun_urls = r.get(&STUN_URLS);
    let turn_urls = r.get(&TURN_URLS);
    let turn_username = r.opt(&TURN_USERNAME);
    let turn_credential = r.opt(&TURN_CREDENTIAL);
    let turn_secret = r.secret(&TURN_SECRET, &TURN_SECRET_FILE);
    if turn_username.is_some() != turn_credential.is_some() {
        r.err(
            &TURN_CREDENTIAL.meta,
            "ice.turn_username and ice.turn_credential must be set together",
        );
    }
    let turn_credential_ttl = r.get(&TURN_CREDENTIAL_TTL);
    let ice_transport_policy = r.get(&ICE_TRANSPORT_POLICY);
    if ice_transport_policy == "relay" && turn_urls.is_empty() {
        // Browsers would gather no candidate at all: every call would fail.
        r.err(
            &ICE_TRANSPORT_POLICY.meta,
            "relay needs at least one TURN URL in ice.turn_urls (WEBRTC_TURN_URLS); without one no peer connection can be made",
        );
    }
    IceConfig {
        stun_urls,
        turn_urls,
        turn_username,
        turn_credential,
        turn_secret,
        turn_credential_ttl,
        ice_transport_policy: ice_transport_policy.to_owned(),
        bundle_policy: r.get(&BUNDLE_POLICY).to_owned(),
        rtcp_mux_policy: r.get(&RTCP_MUX_POLICY).to_owned(),
    }
}
