//! Typed settings from CLI flags, environment variables and a YAML file
//! (precedence in that order, then defaults). Every problem is collected and
//! reported at once, one line per setting; nothing here starts the server.
//! Inputs come through the small [`Env`] and [`Files`] traits so tests pass
//! maps instead of touching the process environment.
//!
//! | file | owns |
//! |---|---|
//! | `settings.rs` | the table: one typed constant per setting (YAML key, env var, flag, default, parser, help) |
//! | `values.rs` | the value parsers the table uses (pure: text in, value or message out) |
//! | `sources.rs` | [`Env`], [`Files`], the YAML file, and which source wins |
//! | `cli.rs` | the command line (clap): `--dev`, `--config`, one flag per setting, `--help`, `--version`, and the `token` subcommand's arguments as given |
//! | `reader.rs` | typed reads of a setting constant, recording every error |
//! | `build.rs` | [`Config`] (or, for `token`, [`SigningConfig`]) from the reader, and the rules that span settings |
//!
//! # Adding a setting
//!
//! 1. Add one constant to the `settings!` block in `settings.rs`, where it
//!    belongs in the documentation order:
//!    ```ignore
//!    MAX_ROOMS: Setting<usize> = Setting::new(
//!        "rooms.max_rooms", "WEBRTC_MAX_ROOMS", "--max-rooms", "1000",
//!        Parse::Text(|v| at_least(v, 1)), "rooms per instance");
//!    ```
//!    `Setting<T>` always has a value (the default is text in the env var's
//!    syntax, parsed by the same parser; `--help` shows it); `Optional<T>`
//!    may stay unset (`None`) and its fourth argument says what unset means.
//!    Parsers: `Parse::Text(fn(&str) -> Result<T, String>)` (trimmed, empty =
//!    unset), `Parse::List(fn(Vec<String>) -> Result<T, String>)`
//!    (comma-separated in env/flags, a YAML sequence), `Parse::OneOf(&[("word",
//!    value), ..])`. Reusable parsers live in `values.rs`; an `Err` is the text
//!    after the setting's name (`expected an integer >= 1, got "0"`) and never
//!    echoes a secret. That one constant gives the YAML key (a dotted key is a
//!    section: `rooms.max_rooms` is `rooms: {max_rooms: ..}`), the env var, the
//!    flag and its `--help` line.
//! 2. Add the typed field to its struct below and read it in `build.rs`:
//!    `max_rooms: r.get(&MAX_ROOMS)` (`r.opt(&X)` for an `Optional`,
//!    `r.secret(&X, &X_FILE)` for a secret with a `_file` twin). A rule that
//!    spans settings goes there too: `r.err(&X.meta, "...")` records it.
//! 3. Add its row to the settings table in docs/configuration.md (YAML key,
//!    env var, flag, default, meaning); a test fails until the row exists and
//!    names the same env var, flag and default.
//!
//! A misspelt constant does not compile; an unknown YAML key or flag is a
//! configuration error.

mod build;
mod cli;
mod reader;
mod settings;
mod sources;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use build::{random_secret, MIN_HS256_SECRET_BYTES};
pub use cli::{token_usage, usage, TokenArgs};
pub use settings::{DefaultText, Meta, SETTINGS};
pub use sources::{Env, Files, ProcessEnv, RealFiles};

/// Exit code for bad configuration (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

const CONFIG_FLAG: &str = "--config";
const CONFIG_ENV: &str = "SWITCHBOARD_CONFIG";

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
}

/// The key tokens are verified with; its kind always matches the algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Secret),
    /// RS256/ES256 public key, PEM text (validated at load time).
    PublicKeyPem(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// Static TURN credentials (used when no TURN secret is set).
    pub turn_username: Option<String>,
    pub turn_credential: Option<Secret>,
    /// coturn REST API shared secret (`use-auth-secret`).
    pub turn_secret: Option<Secret>,
    pub turn_credential_ttl: Duration,
    pub ice_transport_policy: String,
    pub bundle_policy: String,
    pub rtcp_mux_policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsConfig {
    pub max_participants: usize,
    /// Connections of one user (JWT `sub`) per room, cluster-wide; `None` = no limit.
    pub max_user_connections: Option<usize>,
    pub presence_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Delivered bytes (frame bytes × recipients) per second per connection.
    pub rate_limit_bytes_per_second: u64,
    /// Size of the delivered-bytes bucket.
    pub rate_limit_bytes_burst: u64,
    /// Largest participant `metadata` (compact JSON bytes): a bigger token
    /// claim is refused at join, a bigger server API update with 413.
    pub max_metadata_bytes: usize,
    /// Deepest nesting of arrays/objects in a client message (envelope = 1).
    pub max_json_depth: usize,
    /// Longest a session may last whatever its token says; `None` = no limit.
    pub max_session: Option<Duration>,
    /// Connections of one user (JWT `sub`) on this instance; `None` = no limit.
    pub max_user_connections_per_instance: Option<usize>,
    pub outbound_queue_messages: usize,
    pub outbound_queue_bytes: usize,
    pub ping_interval: Duration,
    /// How long a peer may stay silent after a ping, and how long a write to
    /// it may block before it counts as not reading.
    pub ping_timeout: Duration,
    /// Bytes the WebSocket layer may hold unsent for one connection beyond
    /// its write batch: automatic pongs and the frame being written.
    pub write_buffer_bytes: usize,
    /// Bound on a server-initiated close: flushing what is queued, the close
    /// frame, and reading until the client's close.
    pub close_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL, possibly with a password: a secret.
    pub url: Option<Secret>,
    /// Seed nodes of a Redis Cluster (each a secret: it may carry a password); exclusive
    /// with `url`.
    pub cluster_urls: Option<Vec<Secret>>,
    pub key_prefix: String,
    /// How long a PUBLISH waits for Redis' reply; after that the sender hears
    /// `delivery_unknown` (Redis may still carry the message).
    pub publish_timeout: Duration,
}

/// Resuming a lost connection (see `resume` and `inbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeConfig {
    /// How long a participant whose connection was lost stays in its rooms; zero = off.
    pub grace: Duration,
    pub inbox_messages: usize,
    pub inbox_bytes: usize,
    /// Key of resume tokens; `None` = derived from the HS256 JWT secret, else random.
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub drain_window: Duration,
    pub drain_timeout: Duration,
}

/// How connections are accepted and bounded (see `listener`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsConfig {
    /// Open connections overall (WebSockets included).
    pub max: usize,
    /// Open connections per client address (IPv6: per /64).
    pub max_per_ip: usize,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a request body, from the end of its head.
    pub body_read_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: crate::listener::TrustedProxies,
}

/// One entry of `webhooks.endpoints` as written, before its secret is read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpointSpec {
    /// May carry a token in its query: kept out of logs.
    pub url: Secret,
    pub name: Option<String>,
    pub secret: Option<Secret>,
    pub secret_file: Option<String>,
    /// `None` = every event.
    pub events: Option<Vec<crate::webhook::EventKind>>,
}

/// One webhook endpoint, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Metrics and logs name it by this (never by its URL).
    pub name: String,
    pub url: Secret,
    pub secret: crate::webhook::SigningSecret,
    pub events: crate::webhook::EventFilter,
}

/// Where and how webhooks are sent; no endpoints = no webhooks (nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub endpoints: Vec<WebhookEndpoint>,
    pub timeout: Duration,
    pub retry_horizon: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_in_flight: usize,
}

/// The complete, validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub instance_id: String,
    /// `--dev`: in-process bus and a random HS256 secret.
    pub dev: bool,
    pub jwt: JwtConfig,
    pub ice: IceConfig,
    pub rooms: RoomsConfig,
    /// Shared with every session (`Arc`): one copy per instance, not one per connection.
    pub limits: std::sync::Arc<Limits>,
    /// `None` = any origin.
    pub allowed_origins: Option<Vec<String>>,
    pub redis: RedisConfig,
    pub shutdown: ShutdownConfig,
    pub connections: ConnectionsConfig,
    pub webhooks: WebhookConfig,
    pub resume: ResumeConfig,
}

/// The key tokens are signed with, for `switchboard-server token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// HS256 shared secret.
    Secret(Secret),
    /// RS256/ES256 private key, PEM text (validated at load time).
    PrivateKeyPem(Secret),
}

/// What `switchboard-server token` signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    pub algorithm: JwtAlgorithm,
    pub key: SigningKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The server's side of the key when configured (HS256: the same
    /// secret; RS256/ES256: `jwt.public_key_file`): each minted token is
    /// checked against it, so a key pair that does not match is caught.
    pub verify: Option<JwtConfig>,
}

/// `switchboard-server token ...`: the arguments as given and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCommand {
    pub args: TokenArgs,
    pub signing: SigningConfig,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    /// Mint a token (`token` subcommand).
    Token(Box<TokenCommand>),
    /// Print [`usage`].
    Help,
    /// Print [`token_usage`].
    TokenHelp,
    Version,
}

/// One configuration problem; `Display` is a single line naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    fn new(setting: &Meta, message: impl Into<String>) -> Self {
        ConfigError {
            setting: Self::label(setting),
            message: message.into(),
        }
    }

    /// How an error names a setting: all three of its names.
    fn label(st: &Meta) -> String {
        format!("{} ({} / {})", st.key, st.env, st.flag)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.setting, self.message)
    }
}

/// Every problem found, in settings order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the configuration from `args` (without the program name), the
    /// environment and the files they name.
    pub fn load(
        args: &[String],
        env: &dyn Env,
        files: &dyn Files,
    ) -> Result<Command, ConfigErrors> {
        let mut errors = Vec::new();
        let args = cli::parse(args, &mut errors);
        match args.help {
            cli::Help::Server => return Ok(Command::Help),
            cli::Help::Token => return Ok(Command::TokenHelp),
            cli::Help::No => {}
        }
        if args.version {
            return Ok(Command::Version);
        }
        let config_path = args
            .config
            .or_else(|| env.var(CONFIG_ENV).filter(|v| !v.trim().is_empty()));
        let file = match &config_path {
            None => Default::default(),
            Some(path) => sources::read_file(path, files, &mut errors),
        };
        let sources = sources::Sources {
            flags: args.flags,
            env,
            file,
        };
        let mut r = reader::Reader::new(&sources, files, errors);
        let command = match args.token {
            None => Command::Run(Box::new(build::build(&mut r, args.dev))),
            Some(token_args) => {
                if args.dev {
                    r.errors.push(ConfigError {
                        setting: "--dev".into(),
                        message: "not used with token: it would sign with a random secret no server knows".into(),
                    });
                }
                Command::Token(Box::new(TokenCommand {
                    args: token_args,
                    signing: build::build_signing(&mut r),
                }))
            }
        };
        if r.errors.is_empty() {
            Ok(command)
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

/// The table entry for a YAML key, for tests that walk the table.
#[cfg(test)]
fn find(key: &str) -> &'static Meta {
    settings::lookup(key).unwrap_or_else(|| panic!("no setting {key}"))
}

#[cfg(test)]
use std::collections::HashMap;

#[cfg(test)]
#[path = "../config_tests.rs"]
mod tests;
