//! Pure rendering of the `switchboard-server` config file (BRIEF.md's config table) from a spec
//! and its resolved secrets, and the sha256 of exactly those bytes. The file lives in a Secret,
//! so secrets are written inline.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{LimitsSpec, SignalingCluster};
use crate::names::SERVER_PORT;
use crate::resolve::{JwtKey, Resolved};

/// Where the config Secret is mounted in server pods (a directory mount, so updates reach
/// running pods too; `subPath` mounts never update).
pub const MOUNT_DIR: &str = "/etc/switchboard";
/// Key of the config file in the config Secret.
pub const CONFIG_FILE: &str = "config.yaml";
/// Key of the JWT public key file in the config Secret (RS256/ES256 only).
pub const JWT_PUBLIC_KEY_FILE: &str = "jwt-public-key.pem";

/// The rendered config: the files of the config Secret and the hash pods are annotated with.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedConfig {
    /// `config.yaml`.
    pub yaml: String,
    /// Lower-case sha256 hex of exactly `yaml`'s bytes.
    pub hash: String,
    /// Other files of the config Secret, by key (the JWT public key for RS256/ES256).
    pub extra_files: BTreeMap<String, String>,
}

// The YAML holds secrets: keep them out of Debug output (and so out of logs).
impl std::fmt::Debug for RenderedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedConfig")
            .field("hash", &self.hash)
            .field("extra_files", &self.extra_files.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Failure to serialize the config (not expected: every field is a plain string or number).
#[derive(Debug, thiserror::Error)]
#[error("rendering the server config failed: {0}")]
pub struct RenderError(#[from] serde_yaml::Error);

#[derive(Serialize)]
struct File<'a> {
    listen: String,
    log_format: &'a str,
    jwt: Jwt<'a>,
    ice: Ice<'a>,
    rooms: Rooms,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allowed_origins: &'a [String],
    redis: Redis<'a>,
    /// The seeds of an external Redis Cluster; the server's key is not under `redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_cluster_urls: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Limits::is_empty")]
    limits: Limits,
    connections: Connections,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhooks: Option<Webhooks<'a>>,
    #[serde(skip_serializing_if = "Resume::is_empty")]
    resume: Resume<'a>,
}

/// The server's `resume` section: only what the spec sets, plus the shared key when the servers
/// could not derive one themselves (see [`Resolved::resume_secret`]).
#[derive(Serialize, Default, PartialEq)]
struct Resume<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_messages: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

impl Resume<'_> {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// The server's `webhooks` section: the endpoints with their secrets inline (this file is a
/// Secret), and only the timings the spec sets.
#[derive(Serialize)]
struct Webhooks<'a> {
    endpoints: Vec<WebhookEndpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_horizon_secs: Option<i64>,
}

#[derive(Serialize)]
struct WebhookEndpoint<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    secret: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<&'static str>,
}

/// Inside a cluster every client reaches the pods through an ingress controller, a load
/// balancer or kube-proxy, all on private addresses: without trusting them for
/// `X-Forwarded-For`, the server's per-address connection cap would count whole proxies as one
/// client and refuse real users.
const IN_CLUSTER_PROXIES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

#[derive(Serialize)]
struct Connections {
    trusted_proxies: [&'static str; 5],
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_per_ip: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_read_timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_header_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_read_timeout_ms: Option<i64>,
}

/// The server's `limits` section: only what the spec sets, so the server's own defaults apply
/// to the rest (and move with server upgrades).
#[derive(Serialize, Default, PartialEq)]
struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_second: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_burst: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_bytes_per_second: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_bytes_burst: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_json_depth: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_metadata_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_session_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_queue_messages: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_queue_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_buffer_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_interval_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_timeout_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_user_connections_per_instance: Option<i64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    fn from_spec(spec: &LimitsSpec) -> Self {
        Limits {
            max_message_bytes: spec.max_message_bytes,
            rate_limit_per_second: spec.rate_per_second,
            rate_limit_burst: spec.rate_burst,
            rate_limit_bytes_per_second: spec.rate_bytes_per_second,
            rate_limit_bytes_burst: spec.rate_bytes_burst,
            max_json_depth: spec.max_json_depth,
            max_metadata_bytes: spec.max_metadata_bytes,
            max_session_secs: spec.max_session_seconds,
            outbound_queue_messages: spec.outbound_queue_messages,
            outbound_queue_bytes: spec.outbound_queue_bytes,
            write_buffer_bytes: spec.write_buffer_bytes,
            ping_interval_secs: spec.ping_interval_seconds,
            ping_timeout_secs: spec.ping_timeout_seconds,
            close_timeout_ms: spec.close_timeout_ms,
            max_user_connections_per_instance: spec.max_user_connections_per_pod,
        }
    }
}

#[derive(Serialize)]
struct Jwt<'a> {
    algorithm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audience: Option<&'a str>,
}

#[derive(Serialize)]
struct Ice<'a> {
    stun_urls: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    turn_urls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    turn_secret: Option<&'a str>,
    turn_credential_ttl_secs: i64,
    ice_transport_policy: &'a str,
    bundle_policy: &'a str,
    rtcp_mux_policy: &'a str,
}

#[derive(Serialize)]
struct Rooms {
    max_participants: i32,
    presence_ttl_secs: i32,
    /// From `spec.limits`; unset keeps the server's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_user_connections: Option<i64>,
}

#[derive(Serialize)]
struct Redis<'a> {
    /// One Redis; unset for a Redis Cluster (`redis_cluster_urls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    key_prefix: &'a str,
}

/// Renders the server config for `sc` with its resolved secrets.
pub fn render(sc: &SignalingCluster, resolved: &Resolved) -> Result<RenderedConfig, RenderError> {
    let spec = &sc.spec;
    let mut extra_files = BTreeMap::new();
    let (secret, public_key_file) = match &resolved.jwt {
        JwtKey::Hs256Secret(s) => (Some(s.as_str()), None),
        JwtKey::PublicKeyPem(pem) => {
            extra_files.insert(JWT_PUBLIC_KEY_FILE.to_owned(), pem.clone());
            (None, Some(format!("{MOUNT_DIR}/{JWT_PUBLIC_KEY_FILE}")))
        }
    };
    let file = File {
        // Inside the pod: every interface, on the port the Deployment declares.
        listen: format!("0.0.0.0:{SERVER_PORT}"),
        log_format: "json",
        jwt: Jwt {
            algorithm: spec.auth.algorithm.as_str(),
            secret,
            public_key_file,
            issuer: spec.auth.issuer.as_deref(),
            audience: spec.auth.audience.as_deref(),
        },
        ice: Ice {
            stun_urls: &spec.ice.stun_urls,
            turn_urls: &spec.ice.turn_urls,
            turn_secret: resolved.turn_secret.as_deref(),
            turn_credential_ttl_secs: spec.ice.credential_ttl_seconds,
            ice_transport_policy: spec.ice.ice_transport_policy.as_str(),
            bundle_policy: spec.ice.bundle_policy.as_str(),
            rtcp_mux_policy: spec.ice.rtcp_mux_policy.as_str(),
        },
        rooms: Rooms {
            max_participants: spec.rooms.max_participants,
            presence_ttl_secs: spec.rooms.presence_ttl_seconds,
            max_user_connections: spec.limits.max_user_connections_per_room,
        },
        allowed_origins: &spec.allowed_origins,
        redis: Redis {
            url: (!resolved.redis_cluster).then_some(resolved.redis_url.as_str()),
            key_prefix: &spec.redis.key_prefix,
        },
        redis_cluster_urls: resolved.redis_cluster.then(|| {
            resolved
                .redis_url
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }),
        limits: Limits::from_spec(&spec.limits),
        connections: Connections {
            trusted_proxies: IN_CLUSTER_PROXIES,
            max: spec.limits.max_connections,
            max_per_ip: spec.limits.max_connections_per_ip,
            header_read_timeout_ms: spec.limits.header_read_timeout_ms,
            max_header_bytes: spec.limits.max_header_bytes,
            body_read_timeout_ms: spec.limits.body_read_timeout_ms,
        },
        webhooks: (!spec.webhooks.endpoints.is_empty()).then(|| Webhooks {
            endpoints: spec
                .webhooks
                .endpoints
                .iter()
                .zip(&resolved.webhook_secrets)
                .map(|(e, secret)| WebhookEndpoint {
                    url: &e.url,
                    name: e.name.as_deref(),
                    secret,
                    events: e.events.iter().map(|k| k.as_str()).collect(),
                })
                .collect(),
            timeout_ms: spec.webhooks.timeout_ms,
            retry_horizon_secs: spec.webhooks.retry_horizon_seconds,
        }),
        resume: Resume {
            grace_secs: spec.resume.grace_seconds,
            inbox_messages: spec.resume.inbox_messages,
            inbox_bytes: spec.resume.inbox_bytes,
            secret: resolved.resume_secret.as_deref(),
        },
    };
    let mut yaml = String::from(
        "# Rendered by switchboard-operator from a SignalingCluster; edits are overwritten.\n",
    );
    // The public key lives in a second file whose bytes the hash would not see; naming its
    // digest here makes a key rotation change config.yaml, and so roll the pods.
    for (key, content) in &extra_files {
        yaml.push_str(&format!(
            "# {key} sha256: {}\n",
            sha256_hex(content.as_bytes())
        ));
    }
    yaml.push_str(&serde_yaml::to_string(&file)?);
    let hash = sha256_hex(yaml.as_bytes());
    Ok(RenderedConfig {
        yaml,
        hash,
        extra_files,
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
