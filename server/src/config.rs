//! Typed settings from CLI flags, environment variables and a YAML file
//! (precedence in that order, then defaults). Every problem is collected and
//! reported at once, one line per setting; nothing here starts the server.
//! Inputs come through the small [`Env`] and [`Files`] traits so tests pass
//! maps instead of touching the process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

/// Exit code for bad configuration (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// Where environment variables come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where files named by settings (config file, secret files) are read from.
pub trait Files {
    fn read(&self, path: &str) -> std::io::Result<String>;
}

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

impl Files for HashMap<String, String> {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }
}

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
    pub presence_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub outbound_queue_messages: usize,
    pub outbound_queue_bytes: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL, possibly with a password: a secret.
    pub url: Option<Secret>,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub drain_window: Duration,
    pub drain_timeout: Duration,
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
    pub limits: Limits,
    /// `None` = any origin.
    pub allowed_origins: Option<Vec<String>>,
    pub redis: RedisConfig,
    pub shutdown: ShutdownConfig,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// One setting's names in the three sources.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub flag: &'static str,
    pub list: bool,
    pub help: &'static str,
}

const fn s(
    key: &'static str,
    env: &'static str,
    flag: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        flag,
        list: false,
        help,
    }
}

/// A list setting: like `s` but comma-separated in env vars and flags.
const fn l(
    key: &'static str,
    env: &'static str,
    flag: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        list: true,
        ..s(key, env, flag, help)
    }
}

/// Every setting, in documentation order (docs/configuration.md mirrors this).
pub const SETTINGS: &[Setting] = &[
    s(
        "listen",
        "SWITCHBOARD_LISTEN",
        "--listen",
        "address to listen on [127.0.0.1:8080]",
    ),
    s(
        "log_format",
        "SWITCHBOARD_LOG_FORMAT",
        "--log-format",
        "pretty or json [pretty]",
    ),
    s(
        "instance_id",
        "SWITCHBOARD_INSTANCE_ID",
        "--instance-id",
        "instance name [hostname-random]",
    ),
    s(
        "jwt.algorithm",
        "JWT_ALGORITHM",
        "--jwt-algorithm",
        "HS256, RS256 or ES256 [HS256]",
    ),
    s("jwt.secret", "JWT_SECRET", "--jwt-secret", "HS256 secret"),
    s(
        "jwt.secret_file",
        "JWT_SECRET_FILE",
        "--jwt-secret-file",
        "file holding the HS256 secret",
    ),
    s(
        "jwt.public_key_file",
        "JWT_PUBLIC_KEY_FILE",
        "--jwt-public-key-file",
        "PEM public key for RS256/ES256",
    ),
    s(
        "jwt.issuer",
        "JWT_ISSUER",
        "--jwt-issuer",
        "required iss claim [not checked]",
    ),
    s(
        "jwt.audience",
        "JWT_AUDIENCE",
        "--jwt-audience",
        "required aud claim [not checked]",
    ),
    l(
        "ice.stun_urls",
        "WEBRTC_STUN_URLS",
        "--stun-urls",
        "STUN URLs, comma-separated [stun:stun.l.google.com:19302]",
    ),
    l(
        "ice.turn_urls",
        "WEBRTC_TURN_URLS",
        "--turn-urls",
        "TURN URLs, comma-separated",
    ),
    s(
        "ice.turn_username",
        "WEBRTC_TURN_USERNAME",
        "--turn-username",
        "static TURN username",
    ),
    s(
        "ice.turn_credential",
        "WEBRTC_TURN_CREDENTIAL",
        "--turn-credential",
        "static TURN credential",
    ),
    s(
        "ice.turn_secret",
        "WEBRTC_TURN_SECRET",
        "--turn-secret",
        "coturn REST API shared secret",
    ),
    s(
        "ice.turn_secret_file",
        "WEBRTC_TURN_SECRET_FILE",
        "--turn-secret-file",
        "file holding the coturn REST secret",
    ),
    s(
        "ice.turn_credential_ttl_secs",
        "WEBRTC_TURN_CREDENTIAL_TTL",
        "--turn-credential-ttl",
        "TURN credential lifetime, seconds [86400]",
    ),
    s(
        "ice.ice_transport_policy",
        "WEBRTC_ICE_TRANSPORT_POLICY",
        "--ice-transport-policy",
        "all or relay [all]",
    ),
    s(
        "ice.bundle_policy",
        "WEBRTC_BUNDLE_POLICY",
        "--bundle-policy",
        "balanced, max-compat or max-bundle [balanced]",
    ),
    s(
        "ice.rtcp_mux_policy",
        "WEBRTC_RTCP_MUX_POLICY",
        "--rtcp-mux-policy",
        "require or negotiate [require]",
    ),
    s(
        "rooms.max_participants",
        "WEBRTC_MAX_PARTICIPANTS_PER_ROOM",
        "--max-participants-per-room",
        "participants per room, cluster-wide [50]",
    ),
    s(
        "rooms.presence_ttl_secs",
        "WEBRTC_ROOM_PRESENCE_TTL",
        "--room-presence-ttl",
        "instance heartbeat TTL, seconds [30]",
    ),
    s(
        "limits.max_message_bytes",
        "WEBRTC_MAX_MESSAGE_BYTES",
        "--max-message-bytes",
        "largest client message [65536]",
    ),
    s(
        "limits.rate_limit_per_second",
        "WEBRTC_RATE_LIMIT_PER_SECOND",
        "--rate-limit-per-second",
        "messages per second per connection [50]",
    ),
    s(
        "limits.rate_limit_burst",
        "WEBRTC_RATE_LIMIT_BURST",
        "--rate-limit-burst",
        "token bucket size [200]",
    ),
    s(
        "limits.outbound_queue_messages",
        "WEBRTC_OUTBOUND_QUEUE_MESSAGES",
        "--outbound-queue-messages",
        "queued messages per connection [256]",
    ),
    s(
        "limits.outbound_queue_bytes",
        "WEBRTC_OUTBOUND_QUEUE_BYTES",
        "--outbound-queue-bytes",
        "queued bytes per connection [1048576]",
    ),
    s(
        "limits.ping_interval_secs",
        "WEBRTC_PING_INTERVAL",
        "--ping-interval",
        "WebSocket ping interval, seconds [20]",
    ),
    s(
        "limits.ping_timeout_secs",
        "WEBRTC_PING_TIMEOUT",
        "--ping-timeout",
        "drop a peer silent this long after a ping, seconds [20]",
    ),
    l(
        "allowed_origins",
        "WEBRTC_ALLOWED_ORIGINS",
        "--allowed-origins",
        "allowed Origin headers, comma-separated [any]",
    ),
    s(
        "redis.url",
        "REDIS_URL",
        "--redis-url",
        "redis:// or rediss:// URL [in-process bus]",
    ),
    s(
        "redis.url_file",
        "REDIS_URL_FILE",
        "--redis-url-file",
        "file holding the Redis URL",
    ),
    s(
        "redis.key_prefix",
        "REDIS_KEY_PREFIX",
        "--redis-key-prefix",
        "Redis key prefix [switchboard]",
    ),
    s(
        "shutdown.drain_delay_ms",
        "SWITCHBOARD_DRAIN_DELAY_MS",
        "--drain-delay-ms",
        "wait before telling clients to reconnect [2000]",
    ),
    s(
        "shutdown.drain_window_ms",
        "SWITCHBOARD_DRAIN_WINDOW_MS",
        "--drain-window-ms",
        "spread of reconnect hints [10000]",
    ),
    s(
        "shutdown.drain_timeout_ms",
        "SWITCHBOARD_DRAIN_TIMEOUT_MS",
        "--drain-timeout-ms",
        "hard exit after SIGTERM [25000]",
    ),
];

const CONFIG_FLAG: &str = "--config";
const CONFIG_ENV: &str = "SWITCHBOARD_CONFIG";

/// One configuration problem; `Display` is a single line naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
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

fn setting_label(st: &Setting) -> String {
    format!("{} ({} / {})", st.key, st.env, st.flag)
}

/// A raw value before typing: a scalar, or a list (YAML sequence or comma-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    Scalar(String),
    List(Vec<String>),
}

/// Usage text for `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "switchboard-server: WebRTC signaling server\n\nUSAGE: switchboard-server [--dev] [--config FILE] [--FLAG VALUE]...\n\n  --dev                          in-process bus, random JWT secret, prints a token and the demo URL\n  --config FILE                  YAML config file (SWITCHBOARD_CONFIG)\n",
    );
    for st in SETTINGS {
        out.push_str(&format!(
            "  {:<30} {} ({}, {})\n",
            st.flag, st.help, st.env, st.key
        ));
    }
    out.push_str("\nPrecedence: flag > environment > config file > default.\n");
    out
}

struct Sources {
    cli: HashMap<&'static str, String>,
    yaml: BTreeMap<String, Raw>,
}

impl Sources {
    /// The winning raw value of a setting: flag, then env, then file.
    fn get(&self, st: &Setting, env: &dyn Env) -> Option<Raw> {
        let from_text = |v: String| {
            if st.list {
                Raw::List(split_list(&v))
            } else {
                Raw::Scalar(v)
            }
        };
        if let Some(v) = self.cli.get(st.key) {
            return Some(from_text(v.clone()));
        }
        if let Some(v) = env.var(st.env) {
            return Some(from_text(v));
        }
        self.yaml.get(st.key).cloned()
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Flattens a YAML mapping into dotted keys; unknown keys and wrong shapes are errors.
fn flatten_yaml(
    doc: &serde_yaml::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Raw> {
    let mut out = BTreeMap::new();
    let serde_yaml::Value::Mapping(map) = doc else {
        if !doc.is_null() {
            errors.push(ConfigError {
                setting: format!("config file {path} ({CONFIG_ENV} / {CONFIG_FLAG})"),
                message: "must be a YAML mapping".into(),
            });
        }
        return out;
    };
    fn walk(
        prefix: &str,
        map: &serde_yaml::Mapping,
        path: &str,
        out: &mut BTreeMap<String, Raw>,
        errors: &mut Vec<ConfigError>,
    ) {
        for (k, v) in map {
            let Some(k) = k.as_str() else {
                errors.push(ConfigError {
                    setting: format!("config file {path}"),
                    message: "keys must be strings".into(),
                });
                continue;
            };
            let key = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            let known = SETTINGS.iter().find(|s| s.key == key);
            let is_section = SETTINGS
                .iter()
                .any(|s| s.key.starts_with(&format!("{key}.")));
            match (v, known) {
                (serde_yaml::Value::Mapping(inner), None) if is_section => {
                    walk(&key, inner, path, out, errors)
                }
                (_, None) => errors.push(ConfigError {
                    setting: format!("{key} (config file {path})"),
                    message: "unknown setting".into(),
                }),
                (serde_yaml::Value::Null, Some(_)) => {}
                (serde_yaml::Value::Sequence(items), Some(st)) if st.list => {
                    let mut list = Vec::new();
                    for item in items {
                        match scalar_text(item) {
                            Some(t) => list.push(t),
                            None => errors.push(ConfigError {
                                setting: setting_label(st),
                                message: "list items must be strings".into(),
                            }),
                        }
                    }
                    out.insert(key, Raw::List(list));
                }
                (v, Some(st)) => match scalar_text(v) {
                    Some(t) if st.list => {
                        out.insert(key, Raw::List(split_list(&t)));
                    }
                    Some(t) => {
                        out.insert(key, Raw::Scalar(t));
                    }
                    None => errors.push(ConfigError {
                        setting: setting_label(st),
                        message: if st.list {
                            "expected a list of strings".into()
                        } else {
                            "expected a single value".into()
                        },
                    }),
                },
            }
        }
    }
    walk("", map, path, &mut out, errors);
    out
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What a secret setting (inline or `_file`) came to.
enum SecretSetting {
    /// Neither key is set.
    Unset,
    /// Set, but unusable; the error is already recorded.
    Failed,
    /// The secret and the key that supplied it.
    Set(Secret, &'static str),
}

/// The shortest HS256 secret accepted outside `--dev`: RFC 7518 3.2 wants a
/// key at least as long as the hash output (256 bits); a shorter one can be
/// brute-forced from any token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Typed access to the winning values, recording errors as it goes.
struct Reader<'a> {
    sources: &'a Sources,
    env: &'a dyn Env,
    files: &'a dyn Files,
    errors: Vec<ConfigError>,
}

fn find(key: &str) -> &'static Setting {
    // SETTINGS is a compile-time table and every caller passes a literal key
    // from it; an unknown key is a programming error caught by tests.
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or(&SETTINGS[0])
}

impl Reader<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            setting: setting_label(find(key)),
            message: message.into(),
        });
    }

    fn text(&mut self, key: &str) -> Option<String> {
        let st = find(key);
        match self.sources.get(st, self.env) {
            None => None,
            Some(Raw::Scalar(v)) => {
                let v = v.trim().to_owned();
                if v.is_empty() {
                    None
                } else {
                    Some(v)
                }
            }
            Some(Raw::List(_)) => {
                self.err(key, "expected a single value, got a list");
                None
            }
        }
    }

    fn list(&mut self, key: &str) -> Option<Vec<String>> {
        let st = find(key);
        match self.sources.get(st, self.env)? {
            Raw::List(v) => Some(v),
            Raw::Scalar(v) => Some(split_list(&v)),
        }
    }

    fn parse<T: std::str::FromStr>(
        &mut self,
        key: &str,
        default: T,
        what: &str,
        ok: impl Fn(&T) -> bool,
    ) -> T {
        match self.text(key) {
            None => default,
            Some(v) => match v.parse::<T>() {
                Ok(t) if ok(&t) => t,
                _ => {
                    self.err(key, format!("expected {what}, got {v:?}"));
                    default
                }
            },
        }
    }

    fn choice(&mut self, key: &str, default: &'static str, allowed: &[&'static str]) -> String {
        match self.text(key) {
            None => default.to_owned(),
            Some(v) => match allowed.iter().find(|a| a.eq_ignore_ascii_case(&v)) {
                Some(a) => (*a).to_owned(),
                None => {
                    self.err(
                        key,
                        format!("expected one of {}, got {v:?}", allowed.join(", ")),
                    );
                    default.to_owned()
                }
            },
        }
    }

    /// A secret given inline or through a file; both at once is an error.
    fn secret(&mut self, inline_key: &'static str, file_key: &'static str) -> Option<Secret> {
        match self.sourced_secret(inline_key, file_key) {
            SecretSetting::Set(secret, _) => Some(secret),
            SecretSetting::Unset | SecretSetting::Failed => None,
        }
    }

    /// Like [`Reader::secret`], also saying which key supplied the value, or
    /// that an error about it has already been reported.
    fn sourced_secret(
        &mut self,
        inline_key: &'static str,
        file_key: &'static str,
    ) -> SecretSetting {
        let inline = self.text(inline_key);
        let file = self.text(file_key);
        match (inline, file) {
            (Some(v), Some(_)) => {
                self.err(
                    file_key,
                    format!("set either {inline_key} or {file_key}, not both"),
                );
                // Keep going with one of them so this is the only error reported.
                SecretSetting::Set(Secret(v), inline_key)
            }
            (Some(v), None) => SecretSetting::Set(Secret(v), inline_key),
            (None, Some(path)) => match self.files.read(&path) {
                Ok(content) => {
                    let v = content.trim().to_owned();
                    if v.is_empty() {
                        self.err(file_key, format!("file {path} is empty"));
                        SecretSetting::Failed
                    } else {
                        SecretSetting::Set(Secret(v), file_key)
                    }
                }
                Err(e) => {
                    self.err(file_key, format!("cannot read {path}: {e}"));
                    SecretSetting::Failed
                }
            },
            (None, None) => SecretSetting::Unset,
        }
    }
}

fn parse_args(
    args: &[String],
    errors: &mut Vec<ConfigError>,
) -> (
    HashMap<&'static str, String>,
    Option<String>,
    bool,
    Option<Command>,
) {
    let mut cli = HashMap::new();
    let mut config_file = None;
    let mut dev = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        match name {
            "-h" | "--help" => return (cli, config_file, dev, Some(Command::Help)),
            "-V" | "--version" => return (cli, config_file, dev, Some(Command::Version)),
            "--dev" => {
                dev = true;
                continue;
            }
            _ => {}
        }
        let setting = SETTINGS.iter().find(|s| s.flag == name);
        if setting.is_none() && name != CONFIG_FLAG {
            let message = if name.starts_with('-') {
                // Skip what looks like its value so it is not reported too.
                if inline.is_none() && args.get(i).is_some_and(|v| !v.starts_with('-')) {
                    i += 1;
                }
                "unknown flag (see --help)"
            } else {
                "unexpected argument (settings are given as --flag value)"
            };
            errors.push(ConfigError {
                setting: format!("command line argument {name:?}"),
                message: message.into(),
            });
            continue;
        }
        let value = match inline {
            Some(v) => Some(v),
            None if i < args.len() => {
                i += 1;
                Some(args[i - 1].clone())
            }
            None => None,
        };
        let Some(value) = value else {
            errors.push(ConfigError {
                setting: match setting {
                    Some(st) => setting_label(st),
                    None => format!("config file ({CONFIG_ENV} / {CONFIG_FLAG})"),
                },
                message: format!("{name} needs a value"),
            });
            continue;
        };
        match setting {
            Some(st) => {
                cli.insert(st.key, value);
            }
            None => config_file = Some(value),
        }
    }
    (cli, config_file, dev, None)
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
    Secret(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Config {
    /// Loads the configuration from `args` (without the program name), the
    /// environment and the files they name.
    pub fn load(
        args: &[String],
        env: &dyn Env,
        files: &dyn Files,
    ) -> Result<Command, ConfigErrors> {
        let mut errors = Vec::new();
        let (cli, config_flag, dev, early) = parse_args(args, &mut errors);
        if let Some(cmd) = early {
            return Ok(cmd);
        }
        let config_path =
            config_flag.or_else(|| env.var(CONFIG_ENV).filter(|v| !v.trim().is_empty()));
        let yaml = match &config_path {
            None => BTreeMap::new(),
            Some(path) => match files.read(path) {
                Ok(text) => match serde_yaml::from_str::<serde_yaml::Value>(&text) {
                    Ok(doc) => flatten_yaml(&doc, path, &mut errors),
                    Err(e) => {
                        errors.push(ConfigError {
                            setting: format!("config file {path} ({CONFIG_ENV} / {CONFIG_FLAG})"),
                            message: format!("invalid YAML: {}", one_line(&e.to_string())),
                        });
                        BTreeMap::new()
                    }
                },
                Err(e) => {
                    errors.push(ConfigError {
                        setting: format!("config file {path} ({CONFIG_ENV} / {CONFIG_FLAG})"),
                        message: format!("cannot read: {e}"),
                    });
                    BTreeMap::new()
                }
            },
        };
        let sources = Sources { cli, yaml };
        let mut r = Reader {
            sources: &sources,
            env,
            files,
            errors,
        };
        let config = build(&mut r, dev);
        if r.errors.is_empty() {
            Ok(Command::Run(Box::new(config)))
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn build(r: &mut Reader<'_>, dev: bool) -> Config {
    let listen = r.parse(
        "listen",
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        "an address like 127.0.0.1:8080",
        |_| true,
    );
    let log_format = match r
        .choice("log_format", "pretty", &["pretty", "json"])
        .as_str()
    {
        "json" => LogFormat::Json,
        _ => LogFormat::Pretty,
    };
    let instance_id = match r.text("instance_id") {
        Some(v) if v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()) => v,
        Some(v) => {
            r.err(
                "instance_id",
                format!("expected up to 128 printable ASCII characters without spaces, got {v:?}"),
            );
            String::new()
        }
        None => default_instance_id(),
    };

    let jwt = build_jwt(r, dev);
    let ice = build_ice(r);

    let rooms = RoomsConfig {
        max_participants: r.parse("rooms.max_participants", 50usize, "an integer >= 1", |v| {
            *v >= 1
        }),
        presence_ttl: Duration::from_secs(r.parse(
            "rooms.presence_ttl_secs",
            30u64,
            "seconds >= 1",
            |v| *v >= 1,
        )),
    };
    let limits = Limits {
        max_message_bytes: r.parse(
            "limits.max_message_bytes",
            65536usize,
            "an integer >= 256",
            |v| *v >= 256,
        ),
        rate_limit_per_second: r.parse(
            "limits.rate_limit_per_second",
            50u32,
            "an integer >= 1",
            |v| *v >= 1,
        ),
        rate_limit_burst: r.parse("limits.rate_limit_burst", 200u32, "an integer >= 1", |v| {
            *v >= 1
        }),
        outbound_queue_messages: r.parse(
            "limits.outbound_queue_messages",
            256usize,
            "an integer >= 1",
            |v| *v >= 1,
        ),
        outbound_queue_bytes: r.parse(
            "limits.outbound_queue_bytes",
            1_048_576usize,
            "an integer >= 1",
            |v| *v >= 1,
        ),
        ping_interval: Duration::from_secs(r.parse(
            "limits.ping_interval_secs",
            20u64,
            "seconds >= 1",
            |v| *v >= 1,
        )),
        ping_timeout: Duration::from_secs(r.parse(
            "limits.ping_timeout_secs",
            20u64,
            "seconds >= 1",
            |v| *v >= 1,
        )),
    };
    let allowed_origins = match r.list("allowed_origins") {
        None => None,
        Some(list) if list.is_empty() || list.iter().any(|o| o == "*") => None,
        Some(list) => {
            for o in &list {
                if !(o.starts_with("http://") || o.starts_with("https://")) {
                    r.err(
                        "allowed_origins",
                        format!("expected origins like https://example.com, got {o:?}"),
                    );
                }
            }
            Some(
                list.into_iter()
                    .map(|o| o.trim_end_matches('/').to_owned())
                    .collect(),
            )
        }
    };

    let redis_url = r.secret("redis.url", "redis.url_file");
    if let Some(url) = &redis_url {
        let u = url.expose();
        // Never echo the URL: it may carry a password.
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            r.err("redis.url", "expected a redis:// or rediss:// URL");
        } else if redis::Client::open(u).is_err() {
            // Parsing only; no connection is made here.
            r.err(
                "redis.url",
                "not a valid Redis URL (check host, port and database)",
            );
        }
    }
    let redis = RedisConfig {
        // --dev always uses the in-process bus.
        url: if dev { None } else { redis_url },
        key_prefix: match r.text("redis.key_prefix") {
            // The Redis bus owns the prefix rules; checking them here turns a
            // bad prefix into exit 78 instead of a start-up failure.
            Some(p) => match crate::bus::redis::Keys::new(&p, "config-check") {
                Ok(_) => p,
                Err(e) => {
                    r.err("redis.key_prefix", format!("{e}, got {p:?}"));
                    String::new()
                }
            },
            None => "switchboard".to_owned(),
        },
    };
    let shutdown = ShutdownConfig {
        drain_delay: Duration::from_millis(r.parse(
            "shutdown.drain_delay_ms",
            2000u64,
            "milliseconds",
            |_| true,
        )),
        drain_window: Duration::from_millis(r.parse(
            "shutdown.drain_window_ms",
            10000u64,
            "milliseconds",
            |_| true,
        )),
        drain_timeout: Duration::from_millis(r.parse(
            "shutdown.drain_timeout_ms",
            25000u64,
            "milliseconds",
            |_| true,
        )),
    };
    if shutdown.drain_timeout < shutdown.drain_delay {
        // The hard exit would come before any client was told to reconnect.
        r.err(
            "shutdown.drain_timeout_ms",
            format!(
                "must be at least shutdown.drain_delay_ms ({} ms), or the process exits before telling clients to reconnect",
                shutdown.drain_delay.as_millis()
            ),
        );
    }
    Config {
        listen,
        log_format,
        instance_id,
        dev,
        jwt,
        ice,
        rooms,
        limits,
        allowed_origins,
        redis,
        shutdown,
    }
}

fn build_jwt(r: &mut Reader<'_>, dev: bool) -> JwtConfig {
    let algorithm = match r
        .choice("jwt.algorithm", "HS256", &["HS256", "RS256", "ES256"])
        .as_str()
    {
        "RS256" => JwtAlgorithm::Rs256,
        "ES256" => JwtAlgorithm::Es256,
        _ => JwtAlgorithm::Hs256,
    };
    let secret = r.sourced_secret("jwt.secret", "jwt.secret_file");
    let public_key_path = r.text("jwt.public_key_file");
    let issuer = r.text("jwt.issuer");
    let audience = r.text("jwt.audience");
    let placeholder = JwtKey::Secret(Secret(String::new()));
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
                r.err("jwt.public_key_file", "only used with jwt.algorithm RS256 or ES256; HS256 needs jwt.secret or jwt.secret_file");
            }
            match secret {
                SecretSetting::Set(s, key) => {
                    let len = s.expose().len();
                    if len < MIN_HS256_SECRET_BYTES {
                        // The length only: never the secret itself.
                        r.err(
                            key,
                            format!(
                                "HS256 secret too short ({len} bytes): use at least {MIN_HS256_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 48`"
                            ),
                        );
                    }
                    JwtKey::Secret(s)
                }
                SecretSetting::Failed => placeholder,
                SecretSetting::Unset => {
                    r.err("jwt.secret", "no JWT key configured: set jwt.secret (JWT_SECRET) or jwt.secret_file (JWT_SECRET_FILE), or jwt.algorithm RS256/ES256 with jwt.public_key_file; or run with --dev");
                    placeholder
                }
            }
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            if matches!(secret, SecretSetting::Set(..)) {
                r.err(
                    "jwt.secret",
                    format!(
                        "not used with jwt.algorithm {}; set jwt.public_key_file",
                        algorithm.as_str()
                    ),
                );
            }
            match public_key_path {
                None => {
                    r.err(
                        "jwt.public_key_file",
                        format!(
                            "no JWT key configured: jwt.algorithm {} needs a PEM public key file",
                            algorithm.as_str()
                        ),
                    );
                    placeholder
                }
                Some(path) => match r.files.read(&path) {
                    Err(e) => {
                        r.err("jwt.public_key_file", format!("cannot read {path}: {e}"));
                        placeholder
                    }
                    Ok(pem) => {
                        let parsed = match algorithm {
                            JwtAlgorithm::Rs256 => {
                                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map(|_| ())
                            }
                            _ => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).map(|_| ()),
                        };
                        match parsed {
                            Ok(()) => JwtKey::PublicKeyPem(pem),
                            Err(_) => {
                                let kind = if algorithm == JwtAlgorithm::Rs256 {
                                    "an RSA"
                                } else {
                                    "an EC P-256"
                                };
                                r.err(
                                    "jwt.public_key_file",
                                    format!("{path} is not {kind} public key in PEM format"),
                                );
                                placeholder
                            }
                        }
                    }
                },
            }
        }
    };
    JwtConfig {
        algorithm,
        key,
        issuer,
        audience,
    }
}

fn build_ice(r: &mut Reader<'_>) -> IceConfig {
    let stun_urls = r
        .list("ice.stun_urls")
        .unwrap_or_else(|| vec!["stun:stun.l.google.com:19302".to_owned()]);
    for u in &stun_urls {
        if !(u.starts_with("stun:") || u.starts_with("stuns:")) {
            r.err(
                "ice.stun_urls",
                format!("expected stun: or stuns: URLs, got {u:?}"),
            );
        }
    }
    let turn_urls = r.list("ice.turn_urls").unwrap_or_default();
    for u in &turn_urls {
        if !(u.starts_with("turn:") || u.starts_with("turns:")) {
            r.err(
                "ice.turn_urls",
                format!("expected turn: or turns: URLs, got {u:?}"),
            );
        }
    }
    let turn_username = r.text("ice.turn_username");
    let turn_credential = r.text("ice.turn_credential").map(Secret);
    let turn_secret = r.secret("ice.turn_secret", "ice.turn_secret_file");
    if turn_username.is_some() != turn_credential.is_some() {
        r.err(
            "ice.turn_credential",
            "ice.turn_username and ice.turn_credential must be set together",
        );
    }
    let turn_credential_ttl = Duration::from_secs(r.parse(
        "ice.turn_credential_ttl_secs",
        86400u64,
        "seconds >= 1",
        |v| *v >= 1,
    ));
    let ice_transport_policy = r.choice("ice.ice_transport_policy", "all", &["all", "relay"]);
    if ice_transport_policy == "relay" && turn_urls.is_empty() {
        // Browsers would gather no candidate at all: every call would fail.
        r.err(
            "ice.ice_transport_policy",
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
        ice_transport_policy,
        bundle_policy: r.choice(
            "ice.bundle_policy",
            "balanced",
            &["balanced", "max-compat", "max-bundle"],
        ),
        rtcp_mux_policy: r.choice("ice.rtcp_mux_policy", "require", &["require", "negotiate"]),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
