//! The settings table: each setting's YAML key, environment variable, flag,
//! default, value parser and help, written once as a typed constant. It reads
//! nothing; [`super::reader::Reader`] resolves a constant to its value.

use std::net::SocketAddr;
use std::time::Duration;

use super::values::{
    addr, at_least, count_or_off, event_filter, instance_id, key_prefix, milliseconds,
    milliseconds_at_least, origins, seconds_at_least, seconds_or_off, secret, secret_urls, text,
    trusted_proxies, url_list, webhook_endpoints, webhook_urls,
};
use super::{JwtAlgorithm, LogFormat, Secret, WebhookEndpointSpec};
use crate::listener::TrustedProxies;
use crate::webhook::EventFilter;

/// A setting's names and documentation, the same for every value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Dotted YAML key (`limits.max_message_bytes`).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, with its leading `--`.
    pub flag: &'static str,
    /// Comma-separated in env vars and flags, a sequence (or string) in YAML.
    pub list: bool,
    /// A YAML (or JSON) document in env vars and flags, any YAML value in the file: the
    /// parser gets it as YAML text.
    pub structured: bool,
    /// Shown in `--help` (and kept in step with docs/configuration.md by a test).
    pub default: DefaultText,
    /// One line for `--help`.
    pub help: &'static str,
}

/// What a setting is when no source sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultText {
    /// A value in the same syntax as the environment variable, parsed by the
    /// setting's own parser.
    Value(&'static str),
    /// Unset; the text says what that means (`""` when nothing worth saying).
    Unset(&'static str),
}

/// How a raw value becomes a `T`. An `Err` is the message after the setting's
/// name, e.g. `expected an integer >= 1, got "0"`; it never echoes a secret.
pub enum Parse<T: 'static> {
    /// A single value, trimmed; an empty value counts as unset.
    Text(fn(&str) -> Result<T, String>),
    /// A list (possibly empty).
    List(fn(Vec<String>) -> Result<T, String>),
    /// One of a fixed set of words, case-insensitive.
    OneOf(&'static [(&'static str, T)]),
}

impl<T> Parse<T> {
    const fn is_list(&self) -> bool {
        matches!(self, Parse::List(_))
    }
}

/// A setting that always has a value: its default applies when unset.
pub struct Setting<T: 'static> {
    pub meta: Meta,
    pub(super) default: &'static str,
    pub(super) parse: Parse<T>,
}

impl<T> Setting<T> {
    pub const fn new(
        key: &'static str,
        env: &'static str,
        flag: &'static str,
        default: &'static str,
        parse: Parse<T>,
        help: &'static str,
    ) -> Self {
        Setting {
            meta: Meta {
                key,
                env,
                flag,
                list: parse.is_list(),
                structured: false,
                default: DefaultText::Value(default),
                help,
            },
            default,
            parse,
        }
    }
}

/// A setting that may stay unset (`None`); `unset` says what that means.
pub struct Optional<T: 'static> {
    pub meta: Meta,
    pub(super) parse: Parse<T>,
}

impl<T> Optional<T> {
    pub const fn new(
        key: &'static str,
        env: &'static str,
        flag: &'static str,
        unset: &'static str,
        parse: Parse<T>,
        help: &'static str,
    ) -> Self {
        Optional {
            meta: Meta {
                key,
                env,
                flag,
                list: parse.is_list(),
                structured: false,
                default: DefaultText::Unset(unset),
                help,
            },
            parse,
        }
    }

    /// Like [`Optional::new`] for a [`Meta::structured`] setting (`parse` reads YAML text).
    pub const fn structured(
        key: &'static str,
        env: &'static str,
        flag: &'static str,
        unset: &'static str,
        parse: fn(&str) -> Result<T, String>,
        help: &'static str,
    ) -> Self {
        let mut s = Self::new(key, env, flag, unset, Parse::Text(parse), help);
        s.meta.structured = true;
        s
    }
}

/// Declares each setting as a `pub const` and lists them all in [`SETTINGS`],
/// so the table cannot miss one.
macro_rules! settings {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty = $def:expr; )*) => {
        $( $(#[$doc])* pub const $name: $ty = $def; )*
        /// Every setting, in documentation order (docs/configuration.md's table).
        pub const SETTINGS: &[Meta] = &[$($name.meta),*];
    };
}

settings! {
    LISTEN: Setting<SocketAddr> = Setting::new(
        "listen", "SWITCHBOARD_LISTEN", "--listen", "127.0.0.1:8080",
        Parse::Text(addr), "address to listen on");
    LOG_FORMAT: Setting<LogFormat> = Setting::new(
        "log_format", "SWITCHBOARD_LOG_FORMAT", "--log-format", "pretty",
        Parse::OneOf(&[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)]),
        "log format on stderr");
    INSTANCE_ID: Optional<String> = Optional::new(
        "instance_id", "SWITCHBOARD_INSTANCE_ID", "--instance-id", "<hostname>-<6 random hex>",
        Parse::Text(instance_id), "this instance's name on the bus");

    JWT_ALGORITHM: Setting<JwtAlgorithm> = Setting::new(
        "jwt.algorithm", "JWT_ALGORITHM", "--jwt-algorithm", "HS256",
        Parse::OneOf(&[
            ("HS256", JwtAlgorithm::Hs256),
            ("RS256", JwtAlgorithm::Rs256),
            ("ES256", JwtAlgorithm::Es256),
        ]),
        "token signature algorithm");
    JWT_SECRET: Optional<Secret> = Optional::new(
        "jwt.secret", "JWT_SECRET", "--jwt-secret", "",
        Parse::Text(secret), "HS256 secret, at least 32 bytes");
    JWT_SECRET_FILE: Optional<String> = Optional::new(
        "jwt.secret_file", "JWT_SECRET_FILE", "--jwt-secret-file", "",
        Parse::Text(text), "file holding the HS256 secret");
    JWT_PUBLIC_KEY_FILE: Optional<String> = Optional::new(
        "jwt.public_key_file", "JWT_PUBLIC_KEY_FILE", "--jwt-public-key-file", "",
        Parse::Text(text), "PEM public key for RS256/ES256");
    /// Read only by `switchboard-server token`; the server verifies with the public key.
    JWT_PRIVATE_KEY_FILE: Optional<String> = Optional::new(
        "jwt.private_key_file", "JWT_PRIVATE_KEY_FILE", "--jwt-private-key-file", "",
        Parse::Text(text), "PEM private key for RS256/ES256; only `token` reads it");
    JWT_ISSUER: Optional<String> = Optional::new(
        "jwt.issuer", "JWT_ISSUER", "--jwt-issuer", "not checked",
        Parse::Text(text), "required iss claim");
    JWT_AUDIENCE: Optional<String> = Optional::new(
        "jwt.audience", "JWT_AUDIENCE", "--jwt-audience", "not checked",
        Parse::Text(text), "required aud claim");

    STUN_URLS: Setting<Vec<String>> = Setting::new(
        "ice.stun_urls", "WEBRTC_STUN_URLS", "--stun-urls", "stun:stun.l.google.com:19302",
        Parse::List(|v| url_list(v, &["stun:", "stuns:"], "expected stun: or stuns: URLs")),
        "STUN URLs, comma-separated");
    TURN_URLS: Setting<Vec<String>> = Setting::new(
        "ice.turn_urls", "WEBRTC_TURN_URLS", "--turn-urls", "",
        Parse::List(|v| url_list(v, &["turn:", "turns:"], "expected turn: or turns: URLs")),
        "TURN URLs, comma-separated");
    TURN_USERNAME: Optional<String> = Optional::new(
        "ice.turn_username", "WEBRTC_TURN_USERNAME", "--turn-username", "",
        Parse::Text(text), "static TURN username");
    TURN_CREDENTIAL: Optional<Secret> = Optional::new(
        "ice.turn_credential", "WEBRTC_TURN_CREDENTIAL", "--turn-credential", "",
        Parse::Text(secret), "static TURN credential");
    TURN_SECRET: Optional<Secret> = Optional::new(
        "ice.turn_secret", "WEBRTC_TURN_SECRET", "--turn-secret", "",
        Parse::Text(secret), "coturn REST API shared secret");
    TURN_SECRET_FILE: Optional<String> = Optional::new(
        "ice.turn_secret_file", "WEBRTC_TURN_SECRET_FILE", "--turn-secret-file", "",
        Parse::Text(text), "file holding the coturn REST secret");
    TURN_CREDENTIAL_TTL: Setting<Duration> = Setting::new(
        "ice.turn_credential_ttl_secs", "WEBRTC_TURN_CREDENTIAL_TTL", "--turn-credential-ttl", "86400",
        Parse::Text(|v| seconds_at_least(v, 1)), "TURN credential lifetime, seconds");
    ICE_TRANSPORT_POLICY: Setting<&'static str> = Setting::new(
        "ice.ice_transport_policy", "WEBRTC_ICE_TRANSPORT_POLICY", "--ice-transport-policy", "all",
        Parse::OneOf(&[("all", "all"), ("relay", "relay")]), "ICE transport policy");
    BUNDLE_POLICY: Setting<&'static str> = Setting::new(
        "ice.bundle_policy", "WEBRTC_BUNDLE_POLICY", "--bundle-policy", "balanced",
        Parse::OneOf(&[
            ("balanced", "balanced"),
            ("max-compat", "max-compat"),
            ("max-bundle", "max-bundle"),
        ]),
        "bundle policy");
    RTCP_MUX_POLICY: Setting<&'static str> = Setting::new(
        "ice.rtcp_mux_policy", "WEBRTC_RTCP_MUX_POLICY", "--rtcp-mux-policy", "require",
        Parse::OneOf(&[("require", "require"), ("negotiate", "negotiate")]),
        "RTCP mux policy");

    MAX_PARTICIPANTS: Setting<usize> = Setting::new(
        "rooms.max_participants", "WEBRTC_MAX_PARTICIPANTS_PER_ROOM", "--max-participants-per-room", "50",
        Parse::Text(|v| at_least(v, 1)), "participants per room, cluster-wide");
    /// Five: two tabs, a phone, and a reconnect that overlaps the old connection for a
    /// ping timeout still fit; one token can no longer take a whole room.
    MAX_USER_CONNECTIONS_PER_ROOM: Setting<Option<usize>> = Setting::new(
        "rooms.max_user_connections", "WEBRTC_MAX_USER_CONNECTIONS_PER_ROOM", "--max-user-connections-per-room", "5",
        Parse::Text(count_or_off), "connections of one user (JWT sub) per room, cluster-wide; 0 = no limit");
    PRESENCE_TTL: Setting<Duration> = Setting::new(
        "rooms.presence_ttl_secs", "WEBRTC_ROOM_PRESENCE_TTL", "--room-presence-ttl", "30",
        Parse::Text(|v| seconds_at_least(v, 1)), "instance heartbeat TTL, seconds");

    MAX_MESSAGE_BYTES: Setting<usize> = Setting::new(
        "limits.max_message_bytes", "WEBRTC_MAX_MESSAGE_BYTES", "--max-message-bytes", "65536",
        Parse::Text(|v| at_least(v, 256)), "largest client message");
    RATE_LIMIT_PER_SECOND: Setting<u32> = Setting::new(
        "limits.rate_limit_per_second", "WEBRTC_RATE_LIMIT_PER_SECOND", "--rate-limit-per-second", "50",
        Parse::Text(|v| at_least(v, 1)), "messages per second per connection");
    RATE_LIMIT_BURST: Setting<u32> = Setting::new(
        "limits.rate_limit_burst", "WEBRTC_RATE_LIMIT_BURST", "--rate-limit-burst", "200",
        Parse::Text(|v| at_least(v, 1)), "token bucket size");
    RATE_LIMIT_BYTES_PER_SECOND: Setting<u64> = Setting::new(
        "limits.rate_limit_bytes_per_second", "WEBRTC_RATE_LIMIT_BYTES_PER_SECOND", "--rate-limit-bytes-per-second", "262144",
        Parse::Text(|v| at_least(v, 1)), "delivered bytes (size x recipients) per second per connection");
    RATE_LIMIT_BYTES_BURST: Setting<u64> = Setting::new(
        "limits.rate_limit_bytes_burst", "WEBRTC_RATE_LIMIT_BYTES_BURST", "--rate-limit-bytes-burst", "524288",
        Parse::Text(|v| at_least(v, 1)), "delivered-bytes bucket size");
    MAX_METADATA_BYTES: Setting<usize> = Setting::new(
        "limits.max_metadata_bytes", "WEBRTC_MAX_METADATA_BYTES", "--max-metadata-bytes", "1024",
        Parse::Text(|v| at_least(v, 2)), "largest participant metadata (token claim or server API), compact JSON bytes");
    /// The envelope is one level: 2 is the least that lets a payload be an
    /// object or an array.
    MAX_JSON_DEPTH: Setting<usize> = Setting::new(
        "limits.max_json_depth", "WEBRTC_MAX_JSON_DEPTH", "--max-json-depth", "32",
        Parse::Text(|v| at_least(v, 2)), "deepest array/object nesting in a client message");
    MAX_SESSION: Setting<Option<Duration>> = Setting::new(
        "limits.max_session_secs", "WEBRTC_MAX_SESSION_SECS", "--max-session-secs", "0",
        Parse::Text(seconds_or_off), "longest session whatever its token, seconds; 0 = no limit");
    MAX_USER_CONNECTIONS_PER_INSTANCE: Setting<Option<usize>> = Setting::new(
        "limits.max_user_connections_per_instance", "WEBRTC_MAX_USER_CONNECTIONS_PER_INSTANCE", "--max-user-connections-per-instance", "20",
        Parse::Text(count_or_off), "connections of one user (JWT sub) on this instance, all rooms; 0 = no limit");
    OUTBOUND_QUEUE_MESSAGES: Setting<usize> = Setting::new(
        "limits.outbound_queue_messages", "WEBRTC_OUTBOUND_QUEUE_MESSAGES", "--outbound-queue-messages", "256",
        Parse::Text(|v| at_least(v, 1)), "queued messages per connection");
    OUTBOUND_QUEUE_BYTES: Setting<usize> = Setting::new(
        "limits.outbound_queue_bytes", "WEBRTC_OUTBOUND_QUEUE_BYTES", "--outbound-queue-bytes", "1048576",
        Parse::Text(|v| at_least(v, 1)), "queued bytes per connection");
    PING_INTERVAL: Setting<Duration> = Setting::new(
        "limits.ping_interval_secs", "WEBRTC_PING_INTERVAL", "--ping-interval", "20",
        Parse::Text(|v| seconds_at_least(v, 1)), "WebSocket ping interval, seconds");
    PING_TIMEOUT: Setting<Duration> = Setting::new(
        "limits.ping_timeout_secs", "WEBRTC_PING_TIMEOUT", "--ping-timeout", "20",
        Parse::Text(|v| seconds_at_least(v, 1)),
        "drop a peer silent this long after a ping, or whose socket takes nothing this long, seconds");
    WRITE_BUFFER_BYTES: Setting<usize> = Setting::new(
        "limits.write_buffer_bytes", "WEBRTC_WRITE_BUFFER_BYTES", "--write-buffer-bytes", "1048576",
        Parse::Text(|v| at_least(v, 4096)),
        "unsent WebSocket bytes per connection (pongs, the frame being written) beyond the write batch");
    CLOSE_TIMEOUT: Setting<Duration> = Setting::new(
        "limits.close_timeout_ms", "WEBRTC_CLOSE_TIMEOUT_MS", "--close-timeout-ms", "5000",
        Parse::Text(|v| milliseconds_at_least(v, 100)),
        "how long a server-initiated close waits for the client's close frame, ms");

    /// `None` = any origin (also for an empty list or `*`).
    ALLOWED_ORIGINS: Optional<Option<Vec<String>>> = Optional::new(
        "allowed_origins", "WEBRTC_ALLOWED_ORIGINS", "--allowed-origins", "any",
        Parse::List(origins), "allowed Origin headers, comma-separated");

    REDIS_URL: Optional<Secret> = Optional::new(
        "redis.url", "REDIS_URL", "--redis-url", "in-process bus",
        Parse::Text(secret), "redis:// or rediss:// URL");
    REDIS_URL_FILE: Optional<String> = Optional::new(
        "redis.url_file", "REDIS_URL_FILE", "--redis-url-file", "",
        Parse::Text(text), "file holding the Redis URL");
    /// Seed nodes of a Redis Cluster; the key is not under `redis.` because that is how
    /// the setting is named wherever Switchboard is documented (`redis_cluster_urls`).
    REDIS_CLUSTER_URLS: Optional<Vec<Secret>> = Optional::new(
        "redis_cluster_urls", "REDIS_CLUSTER_URLS", "--redis-cluster-urls", "no cluster",
        Parse::List(secret_urls), "Redis Cluster seed nodes: redis:// or rediss:// URLs, comma-separated");
    REDIS_KEY_PREFIX: Setting<String> = Setting::new(
        "redis.key_prefix", "REDIS_KEY_PREFIX", "--redis-key-prefix", "switchboard",
        Parse::Text(key_prefix), "Redis key prefix");
    REDIS_PUBLISH_TIMEOUT: Setting<Duration> = Setting::new(
        "redis.publish_timeout_secs", "REDIS_PUBLISH_TIMEOUT_SECS", "--redis-publish-timeout-secs", "5",
        Parse::Text(|v| seconds_at_least(v, 1)),
        "wait for Redis to confirm a relayed message before answering delivery_unknown, seconds");

    MAX_CONNECTIONS: Setting<usize> = Setting::new(
        "connections.max", "SWITCHBOARD_MAX_CONNECTIONS", "--max-connections", "10000",
        Parse::Text(|v| at_least(v, 1)), "open connections overall");
    MAX_CONNECTIONS_PER_IP: Setting<usize> = Setting::new(
        "connections.max_per_ip", "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "--max-connections-per-ip", "100",
        Parse::Text(|v| at_least(v, 1)), "open connections per client address");
    HEADER_READ_TIMEOUT: Setting<Duration> = Setting::new(
        "connections.header_read_timeout_ms", "SWITCHBOARD_HEADER_READ_TIMEOUT_MS", "--header-read-timeout-ms", "10000",
        Parse::Text(|v| milliseconds_at_least(v, 100)), "time to send a request head, ms");
    /// hyper cannot read heads into a buffer under 8 KiB.
    MAX_HEADER_BYTES: Setting<usize> = Setting::new(
        "connections.max_header_bytes", "SWITCHBOARD_MAX_HEADER_BYTES", "--max-header-bytes", "16384",
        Parse::Text(|v| at_least(v, 8192)), "largest request head, bytes");
    BODY_READ_TIMEOUT: Setting<Duration> = Setting::new(
        "connections.body_read_timeout_ms", "SWITCHBOARD_BODY_READ_TIMEOUT_MS", "--body-read-timeout-ms", "10000",
        Parse::Text(|v| milliseconds_at_least(v, 100)), "time to send a request body after its head, ms");
    TRUSTED_PROXIES: Optional<TrustedProxies> = Optional::new(
        "connections.trusted_proxies", "SWITCHBOARD_TRUSTED_PROXIES", "--trusted-proxies", "none",
        Parse::List(trusted_proxies), "proxies whose X-Forwarded-For is believed, addresses or CIDRs");

    WEBHOOK_URLS: Setting<Vec<String>> = Setting::new(
        "webhooks.urls", "SWITCHBOARD_WEBHOOK_URLS", "--webhook-urls", "",
        Parse::List(webhook_urls), "webhook endpoints (http:// or https://), comma-separated; signed with webhooks.secret");
    WEBHOOK_SECRET: Optional<Secret> = Optional::new(
        "webhooks.secret", "SWITCHBOARD_WEBHOOK_SECRET", "--webhook-secret", "",
        Parse::Text(secret), "Standard Webhooks signing secret (whsec_ + base64) for webhooks.urls and endpoints without their own");
    WEBHOOK_SECRET_FILE: Optional<String> = Optional::new(
        "webhooks.secret_file", "SWITCHBOARD_WEBHOOK_SECRET_FILE", "--webhook-secret-file", "",
        Parse::Text(text), "file holding the webhook signing secret");
    WEBHOOK_EVENTS: Optional<EventFilter> = Optional::new(
        "webhooks.events", "SWITCHBOARD_WEBHOOK_EVENTS", "--webhook-events", "every event",
        Parse::List(event_filter), "event types sent to webhooks.urls, comma-separated");
    /// A list of objects: the one setting that is a YAML document.
    WEBHOOK_ENDPOINTS: Optional<Vec<WebhookEndpointSpec>> = Optional::structured(
        "webhooks.endpoints", "SWITCHBOARD_WEBHOOK_ENDPOINTS", "--webhook-endpoints", "",
        webhook_endpoints, "endpoints with their own name, secret and event filter: a YAML or JSON list of {url, name, secret | secret_file, events}");
    WEBHOOK_TIMEOUT: Setting<Duration> = Setting::new(
        "webhooks.timeout_ms", "SWITCHBOARD_WEBHOOK_TIMEOUT_MS", "--webhook-timeout-ms", "15000",
        Parse::Text(|v| milliseconds_at_least(v, 100)), "time an endpoint has to answer one webhook, ms");
    WEBHOOK_RETRY_HORIZON: Setting<Duration> = Setting::new(
        "webhooks.retry_horizon_secs", "SWITCHBOARD_WEBHOOK_RETRY_HORIZON_SECS", "--webhook-retry-horizon-secs", "3600",
        Parse::Text(|v| seconds_at_least(v, 1)), "retry an undelivered event until it is this old, then drop it, seconds");
    WEBHOOK_RETRY_INITIAL: Setting<Duration> = Setting::new(
        "webhooks.retry_initial_ms", "SWITCHBOARD_WEBHOOK_RETRY_INITIAL_MS", "--webhook-retry-initial-ms", "500",
        Parse::Text(|v| milliseconds_at_least(v, 10)), "first retry delay, doubled per failure, ms");
    WEBHOOK_RETRY_MAX: Setting<Duration> = Setting::new(
        "webhooks.retry_max_ms", "SWITCHBOARD_WEBHOOK_RETRY_MAX_MS", "--webhook-retry-max-ms", "60000",
        Parse::Text(|v| milliseconds_at_least(v, 10)), "longest retry delay, ms");
    WEBHOOK_MAX_IN_FLIGHT: Setting<usize> = Setting::new(
        "webhooks.max_in_flight", "SWITCHBOARD_WEBHOOK_MAX_IN_FLIGHT", "--webhook-max-in-flight", "32",
        Parse::Text(|v| at_least(v, 1)), "webhook requests in flight per endpoint on this instance");

    DRAIN_DELAY: Setting<Duration> = Setting::new(
        "shutdown.drain_delay_ms", "SWITCHBOARD_DRAIN_DELAY_MS", "--drain-delay-ms", "2000",
        Parse::Text(milliseconds), "wait before telling clients to reconnect, ms");
    DRAIN_WINDOW: Setting<Duration> = Setting::new(
        "shutdown.drain_window_ms", "SWITCHBOARD_DRAIN_WINDOW_MS", "--drain-window-ms", "10000",
        Parse::Text(milliseconds), "spread of reconnect hints, ms");
    DRAIN_TIMEOUT: Setting<Duration> = Setting::new(
        "shutdown.drain_timeout_ms", "SWITCHBOARD_DRAIN_TIMEOUT_MS", "--drain-timeout-ms", "25000",
        Parse::Text(milliseconds), "hard exit after SIGTERM, ms");

    RESUME_GRACE: Setting<Duration> = Setting::new(
        "resume.grace_secs", "SWITCHBOARD_RESUME_GRACE_SECS", "--resume-grace-secs", "30",
        Parse::Text(|v| seconds_at_least(v, 0)), "how long a lost connection may resume, seconds; 0 = no resume");
    RESUME_INBOX_MESSAGES: Setting<usize> = Setting::new(
        "resume.inbox_messages", "SWITCHBOARD_RESUME_INBOX_MESSAGES", "--resume-inbox-messages", "256",
        Parse::Text(|v| at_least(v, 1)), "messages kept per participant for a resume");
    RESUME_INBOX_BYTES: Setting<usize> = Setting::new(
        "resume.inbox_bytes", "SWITCHBOARD_RESUME_INBOX_BYTES", "--resume-inbox-bytes", "1048576",
        Parse::Text(|v| at_least(v, 1)), "bytes kept per participant for a resume");
    RESUME_SECRET: Optional<Secret> = Optional::new(
        "resume.secret", "SWITCHBOARD_RESUME_SECRET", "--resume-secret", "derived from jwt.secret",
        Parse::Text(secret), "key of resume tokens (HMAC-SHA256)");
    RESUME_SECRET_FILE: Optional<String> = Optional::new(
        "resume.secret_file", "SWITCHBOARD_RESUME_SECRET_FILE", "--resume-secret-file", "",
        Parse::Text(text), "file holding the resume token key");
}

/// The table entry for a dotted YAML key.
pub fn lookup(key: &str) -> Option<&'static Meta> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// Whether `key` is a section (`jwt`, `limits`) holding settings.
pub fn is_section(key: &str) -> bool {
    SETTINGS.iter().any(|s| {
        s.key
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_DOC: &str = include_str!("../../../docs/configuration.md");

    /// The Default column of docs/configuration.md says what the table says.
    /// (Every default also parses: the `defaults` test reads each setting
    /// with nothing set.)
    #[test]
    fn docs_show_each_default() {
        for st in SETTINGS {
            let row = CONFIG_DOC
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", st.key)))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {}", st.key));
            let cell = row.split(" | ").nth(3).unwrap_or_default();
            let ok = match st.default {
                DefaultText::Value("") | DefaultText::Unset("") => true,
                DefaultText::Value(v) => cell == format!("`{v}`"),
                DefaultText::Unset(what) => cell.contains(what),
            };
            assert!(
                ok,
                "{}: table says {:?}, docs say {cell:?}",
                st.key, st.default
            );
        }
    }

    #[test]
    fn keys_sections_and_names_are_distinct() {
        for (i, a) in SETTINGS.iter().enumerate() {
            assert!(
                !is_section(a.key),
                "{} is both a setting and a section",
                a.key
            );
            for b in &SETTINGS[i + 1..] {
                assert!(
                    a.env != b.env && a.flag != b.flag,
                    "{} and {}",
                    a.key,
                    b.key
                );
            }
        }
    }
}
