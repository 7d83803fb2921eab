//! Pure resolution of a cluster's secret references: given the spec and the Secrets the runtime
//! fetched, produce the values the server config needs, or a [`ConfigError`] a person can act
//! on. Fetching, generating and watching Secrets happen elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::{self, IceTransportPolicy, JwtAlgorithm, SignalingCluster, SignalingClusterSpec};
use crate::names::{self, generated_secrets_needed, GeneratedSecret, REDIS_PORT, SECRET_KEY};

/// Default key of an external Redis URL Secret.
pub const REDIS_URL_KEY: &str = "url";
/// Default key of an RS256/ES256 public key Secret.
pub const PUBLIC_KEY_KEY: &str = "public.pem";
/// Shortest HS256 secret the server accepts (bytes, after trimming whitespace).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Everything secret the rendered server config needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    /// How the servers verify JWTs.
    pub jwt: JwtKey,
    /// TURN REST shared secret; `None` when no TURN URLs are configured.
    pub turn_secret: Option<String>,
    /// Redis URL including the password; with an external Redis Cluster, its seed URLs
    /// (comma-separated, each with the password).
    pub redis_url: String,
    /// `redis_url` holds the seeds of a Redis Cluster (`spec.redis.external.cluster`).
    pub redis_cluster: bool,
    /// The signing secret of each `spec.webhooks.endpoints` entry, in order.
    pub webhook_secrets: Vec<String>,
    /// The resume token key every replica shares: `resume.secretRef`, or the generated one
    /// (RS256/ES256). `None` with resume off, or with HS256 and no reference (the servers
    /// derive it from the JWT key, which they share).
    pub resume_secret: Option<String>,
}

// Secrets never reach logs: Debug prints which values are present, not the values.
impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("jwt", &self.jwt)
            .field(
                "turn_secret",
                &self.turn_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redis_url", &"<redacted>")
            .field("redis_cluster", &self.redis_cluster)
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field(
                "resume_secret",
                &self.resume_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The JWT verification key.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 shared secret.
    Hs256Secret(String),
    /// RS256/ES256 public key in PEM.
    PublicKeyPem(String),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hs256Secret(_) => f.write_str("Hs256Secret(<redacted>)"),
            // Public keys are not secret.
            Self::PublicKeyPem(pem) => f.debug_tuple("PublicKeyPem").field(pem).finish(),
        }
    }
}

/// Why a cluster's configuration cannot be resolved. Shown as `ConfigValid=False` with this
/// reason and message; the runtime leaves running children untouched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub reason: ConfigErrorReason,
    pub message: String,
}

/// Machine-readable reason of a [`ConfigError`] (the condition's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorReason {
    /// A referenced (or generated) Secret does not exist.
    SecretNotFound,
    /// The Secret exists but lacks the key.
    SecretKeyMissing,
    /// The value is empty, not UTF-8, or not of the expected form.
    SecretValueInvalid,
    /// The spec is inconsistent in a way the schema did not catch (e.g. CEL not enforced).
    InvalidSpec,
    /// A child's name is taken by an object this cluster does not own (the runtime never
    /// takes such objects over).
    ObjectNotOwned,
    /// The spec enables a part whose API this cluster's API server does not serve (e.g.
    /// autoscaling/v2 before Kubernetes 1.23).
    ApiUnavailable,
}

impl ConfigErrorReason {
    /// The CamelCase reason used in conditions and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyMissing => "SecretKeyMissing",
            Self::SecretValueInvalid => "SecretValueInvalid",
            Self::InvalidSpec => "InvalidSpec",
            Self::ObjectNotOwned => "ObjectNotOwned",
            Self::ApiUnavailable => "ApiUnavailable",
        }
    }
}

impl ConfigError {
    fn new(reason: ConfigErrorReason, message: String) -> Self {
        Self { reason, message }
    }
}

/// Every Secret name the cluster reads: user references plus the generated Secrets it uses.
/// The runtime watches these (metadata only) and maps changes back to the cluster.
pub fn referenced_secret_names(sc: &SignalingCluster) -> BTreeSet<String> {
    let name = sc.name_any();
    let spec = &sc.spec;
    let mut out: BTreeSet<String> = BTreeSet::new();
    if let Some(r) = &spec.auth.secret_ref {
        out.insert(r.name.clone());
    }
    if let Some(r) = &spec.ice.turn_secret_ref {
        out.insert(r.name.clone());
    }
    for e in &spec.webhooks.endpoints {
        out.insert(e.secret_ref.name.clone());
    }
    if let Some(r) = spec
        .resume
        .secret_ref
        .as_ref()
        .filter(|_| spec.resume.enabled())
    {
        out.insert(r.name.clone());
    }
    if let Some(r) = spec
        .redis
        .external
        .as_ref()
        .and_then(|e| e.secret_ref.as_ref())
    {
        out.insert(r.name.clone());
    }
    for g in generated_secrets_needed(sc) {
        out.insert(g.secret_name(&name));
    }
    out
}

/// Checks the cross-field rules the CRD states as CEL, for API servers that do not enforce CEL
/// (Kubernetes before 1.25) and for objects stored before a rule existed. Reports every
/// violation at once (joined with "; "), each with the message the API server would give.
pub fn check_spec(spec: &SignalingClusterSpec) -> Result<(), ConfigError> {
    let pdb = &spec.pod_disruption_budget;
    let resume = &spec.resume;
    let outside = |v: Option<i64>, min: i64, max: i64| v.is_some_and(|v| v < min || v > max);
    let rules: [(bool, &str); 14] = [
        (
            spec.redis.managed.is_some() == spec.redis.external.is_some(),
            api::MSG_REDIS_EXACTLY_ONE,
        ),
        (
            spec.redis
                .external
                .as_ref()
                .is_some_and(|e| e.secret_ref.is_none()),
            api::MSG_EXTERNAL_REDIS_SECRET,
        ),
        (
            !spec
                .ice
                .turn_urls
                .iter()
                .all(|u| u.starts_with("turn:") || u.starts_with("turns:")),
            api::MSG_TURN_URL_SCHEME,
        ),
        (
            spec.ice.turn_secret_ref.is_some() && spec.ice.turn_urls.is_empty(),
            api::MSG_TURN_SECRET_WITHOUT_URLS,
        ),
        (
            spec.ice.ice_transport_policy == IceTransportPolicy::Relay
                && spec.ice.turn_urls.is_empty(),
            api::MSG_RELAY_NEEDS_TURN,
        ),
        (
            spec.auth.algorithm != JwtAlgorithm::HS256 && spec.auth.secret_ref.is_none(),
            api::MSG_PUBLIC_KEY_REQUIRED,
        ),
        (
            spec.ingress.enabled && spec.ingress.host.is_none(),
            api::MSG_INGRESS_HOST,
        ),
        (
            spec.autoscaling.min_replicas > spec.autoscaling.max_replicas,
            api::MSG_AUTOSCALING_RANGE,
        ),
        (
            pdb.min_available.is_some() && pdb.max_unavailable.is_some(),
            api::MSG_PDB_ONE_BOUND,
        ),
        (
            resume.secret_ref.is_some() && !resume.enabled(),
            api::MSG_RESUME_SECRET_WITHOUT_RESUME,
        ),
        // The schema's ranges, for objects the API server stored without checking them: the
        // server would start with a grace of hours or an inbox of a few bytes per participant.
        (
            outside(resume.grace_seconds, 0, api::RESUME_GRACE_MAX),
            MSG_RESUME_GRACE,
        ),
        (
            outside(resume.inbox_messages, 1, api::RESUME_INBOX_MESSAGES_MAX),
            MSG_RESUME_INBOX_MESSAGES,
        ),
        (
            outside(
                resume.inbox_bytes,
                api::RESUME_INBOX_BYTES_MIN,
                api::RESUME_INBOX_BYTES_MAX,
            ),
            MSG_RESUME_INBOX_BYTES,
        ),
        // Not a CEL rule (the schema's pattern covers it), but the server refuses a prefix
        // it cannot use, and objects stored before the pattern existed may carry one.
        (
            !spec
                .redis
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
                || spec.redis.key_prefix.is_empty()
                || spec.redis.key_prefix.len() > 64,
            MSG_KEY_PREFIX,
        ),
    ];
    let violations: Vec<&str> = rules
        .iter()
        .filter(|(violated, _)| *violated)
        .map(|(_, msg)| *msg)
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::new(
            ConfigErrorReason::InvalidSpec,
            violations.join("; "),
        ))
    }
}

const MSG_KEY_PREFIX: &str =
    "redis.keyPrefix must be 1-64 characters of letters, digits, '_', '-', '.' and ':'";
const MSG_RESUME_GRACE: &str = "resume.graceSeconds must be between 0 (no resume) and 3600 seconds";
const MSG_RESUME_INBOX_MESSAGES: &str = "resume.inboxMessages must be between 1 and 65536";
const MSG_RESUME_INBOX_BYTES: &str = "resume.inboxBytes must be between 1024 and 67108864 (64 MiB)";
/// Shortest resume token key accepted (bytes, after trimming whitespace), as for an HS256 key:
/// whoever guesses it can forge resume tokens.
pub const MIN_RESUME_SECRET_BYTES: usize = 32;

/// Checks the spec ([`check_spec`]), then resolves the cluster's secret references against
/// `secrets` (the Secrets of the cluster's namespace, by name; a name absent from the map does
/// not exist). Reports the first problem in the order spec, JWT, TURN, Redis, webhooks, resume.
pub fn resolve(
    sc: &SignalingCluster,
    secrets: &BTreeMap<String, Secret>,
) -> Result<Resolved, ConfigError> {
    check_spec(&sc.spec)?;
    let name = sc.name_any();
    let namespace = sc.namespace().unwrap_or_default();
    let lookup = Lookup {
        namespace: &namespace,
        secrets,
    };
    let spec = &sc.spec;

    let jwt = match (spec.auth.algorithm, &spec.auth.secret_ref) {
        (JwtAlgorithm::HS256, r) => {
            let (secret, key, what) = match r {
                Some(r) => (r.name.clone(), r.key_or(SECRET_KEY), "auth.secretRef"),
                None => (
                    GeneratedSecret::Jwt.secret_name(&name),
                    GeneratedSecret::Jwt.key(),
                    "the generated JWT key",
                ),
            };
            let value = lookup.value(&secret, key, what)?;
            // The server refuses shorter HS256 keys at start-up (exit 78): say so here instead
            // of letting the pods crash-loop.
            if value.trim().len() < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::new(
                    ConfigErrorReason::SecretValueInvalid,
                    format!(
                        "secret {secret:?} key {key:?} in namespace {namespace:?} (referenced by {what}) is shorter than {MIN_HS256_SECRET_BYTES} bytes, too short for an HS256 key"
                    ),
                ));
            }
            JwtKey::Hs256Secret(value)
        }
        (alg, Some(r)) => {
            let pem = lookup.value(&r.name, r.key_or(PUBLIC_KEY_KEY), "auth.secretRef")?;
            if !pem.contains("-----BEGIN") {
                return Err(ConfigError::new(
                    ConfigErrorReason::SecretValueInvalid,
                    format!(
                        "secret {:?} key {:?} in namespace {:?} is not a PEM public key (no -----BEGIN line), which {} needs",
                        r.name,
                        r.key_or(PUBLIC_KEY_KEY),
                        namespace,
                        alg.as_str()
                    ),
                ));
            }
            JwtKey::PublicKeyPem(pem)
        }
        (alg, None) => {
            return Err(ConfigError::new(
                ConfigErrorReason::InvalidSpec,
                format!(
                    "auth.algorithm is {} but auth.secretRef is not set: name the Secret holding the PEM public key",
                    alg.as_str()
                ),
            ))
        }
    };

    let turn_secret = if spec.ice.turn_urls.is_empty() {
        None
    } else {
        Some(match &spec.ice.turn_secret_ref {
            Some(r) => lookup.value(&r.name, r.key_or(SECRET_KEY), "ice.turnSecretRef")?,
            None => lookup.value(
                &GeneratedSecret::Turn.secret_name(&name),
                GeneratedSecret::Turn.key(),
                "the generated TURN secret",
            )?,
        })
    };

    let redis_url = match (&spec.redis.managed, &spec.redis.external) {
        (Some(_), None) => {
            let password = lookup.value(
                &GeneratedSecret::RedisPassword.secret_name(&name),
                GeneratedSecret::RedisPassword.key(),
                "the managed Redis password",
            )?;
            managed_redis_url(&name, &namespace, &password)
        }
        (None, Some(ext)) => {
            let r = ext.secret_ref.as_ref().ok_or_else(|| {
                ConfigError::new(
                    ConfigErrorReason::InvalidSpec,
                    "redis.external.secretRef is not set: name the Secret holding the Redis URL"
                        .to_owned(),
                )
            })?;
            let url = lookup.value(&r.name, r.key_or(REDIS_URL_KEY), "redis.external.secretRef")?;
            let url = url.trim().to_owned();
            // A cluster's seeds: comma-separated URLs (spaces around commas dropped).
            let urls: Vec<&str> = if ext.cluster {
                url.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect()
            } else {
                vec![url.as_str()]
            };
            let is_url = |url: &str| {
                url.strip_prefix("redis://")
                    .or_else(|| url.strip_prefix("rediss://"))
                    .is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
            };
            // The server parses the URL at start-up and exits on a bad one: catch the obvious
            // cases (wrong scheme, no host, embedded whitespace) here.
            if urls.is_empty() || !urls.iter().all(|u| is_url(u)) {
                // Never echo the value: it usually carries a password.
                return Err(ConfigError::new(
                    ConfigErrorReason::SecretValueInvalid,
                    format!(
                        "secret {:?} key {:?} in namespace {:?} does not hold {}",
                        r.name,
                        r.key_or(REDIS_URL_KEY),
                        namespace,
                        if ext.cluster {
                            "comma-separated redis:// or rediss:// seed URLs of a Redis Cluster"
                        } else {
                            "a redis:// or rediss:// URL"
                        }
                    ),
                ));
            }
            urls.join(",")
        }
        _ => {
            return Err(ConfigError::new(
                ConfigErrorReason::InvalidSpec,
                "set exactly one of redis.managed and redis.external".to_owned(),
            ))
        }
    };

    let redis_cluster = spec.redis.external.as_ref().is_some_and(|e| e.cluster);
    let mut webhook_secrets = Vec::with_capacity(spec.webhooks.endpoints.len());
    for (i, e) in spec.webhooks.endpoints.iter().enumerate() {
        let r = &e.secret_ref;
        let what = format!("webhooks.endpoints[{i}].secretRef");
        let value = lookup.value(&r.name, r.key_or(SECRET_KEY), &what)?;
        let value = value.trim().to_owned();
        // The server refuses anything else at start-up (exit 78): say so here instead of
        // letting the pods crash-loop. Never echo the value.
        if !webhook_secret_ok(&value) {
            return Err(ConfigError::new(
                ConfigErrorReason::SecretValueInvalid,
                format!(
                    "secret {:?} key {:?} in namespace {:?} (referenced by {what}) is not a Standard Webhooks secret: expected whsec_ followed by the base64 of 24 to 64 random bytes",
                    r.name,
                    r.key_or(SECRET_KEY),
                    namespace
                ),
            ));
        }
        webhook_secrets.push(value);
    }

    let resume_secret = if !spec.resume.enabled() {
        None
    } else {
        let source = match (&spec.resume.secret_ref, &jwt) {
            (Some(r), _) => Some((r.name.clone(), r.key_or(SECRET_KEY), "resume.secretRef")),
            // Every server derives the same key from the HS256 secret they share.
            (None, JwtKey::Hs256Secret(_)) => None,
            (None, JwtKey::PublicKeyPem(_)) => Some((
                GeneratedSecret::Resume.secret_name(&name),
                GeneratedSecret::Resume.key(),
                "the generated resume key",
            )),
        };
        match source {
            None => None,
            Some((secret, key, what)) => {
                let value = lookup.value(&secret, key, what)?.trim().to_owned();
                if value.len() < MIN_RESUME_SECRET_BYTES {
                    return Err(ConfigError::new(
                        ConfigErrorReason::SecretValueInvalid,
                        format!(
                            "secret {secret:?} key {key:?} in namespace {namespace:?} (referenced by {what}) is shorter than {MIN_RESUME_SECRET_BYTES} bytes, too short for a resume token key"
                        ),
                    ));
                }
                Some(value)
            }
        }
    };

    Ok(Resolved {
        jwt,
        turn_secret,
        redis_url,
        redis_cluster,
        webhook_secrets,
        resume_secret,
    })
}

/// Whether `value` is `whsec_` + base64 of 24 to 64 bytes, as the server requires.
pub fn webhook_secret_ok(value: &str) -> bool {
    use base64::Engine as _;
    let Some(encoded) = value.strip_prefix("whsec_") else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let no_pad = base64::engine::general_purpose::STANDARD_NO_PAD;
    engine
        .decode(encoded)
        .or_else(|_| no_pad.decode(encoded))
        .is_ok_and(|k| (24..=64).contains(&k.len()))
}

/// URL of cluster `name`'s managed Redis in `namespace`, password percent-encoded.
pub fn managed_redis_url(name: &str, namespace: &str, password: &str) -> String {
    format!(
        "redis://:{}@{}.{}.svc:{}",
        percent_encode_userinfo(password),
        names::redis(name),
        namespace,
        REDIS_PORT
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any password is safe
/// inside a URL's userinfo.
fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Lookup<'a> {
    namespace: &'a str,
    secrets: &'a BTreeMap<String, Secret>,
}

impl Lookup<'_> {
    /// The exact UTF-8 value of `key` in Secret `name`; `what` names the setting
    /// for the message.
    fn value(&self, name: &str, key: &str, what: &str) -> Result<String, ConfigError> {
        let ns = self.namespace;
        let secret = self.secrets.get(name).ok_or_else(|| {
            ConfigError::new(
                ConfigErrorReason::SecretNotFound,
                format!("secret {name:?} in namespace {ns:?} not found (referenced by {what})"),
            )
        })?;
        // `stringData` only exists on writes; a Secret read back from the API has `data`.
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| {
                ConfigError::new(
                    ConfigErrorReason::SecretKeyMissing,
                    format!("secret {name:?} in namespace {ns:?} has no key {key:?} (referenced by {what})"),
                )
            })?;
        let value = String::from_utf8(bytes).map_err(|_| {
            ConfigError::new(
                ConfigErrorReason::SecretValueInvalid,
                format!("secret {name:?} key {key:?} in namespace {ns:?} is not UTF-8 text"),
            )
        })?;
        if value.trim().is_empty() {
            return Err(ConfigError::new(
                ConfigErrorReason::SecretValueInvalid,
                format!("secret {name:?} key {key:?} in namespace {ns:?} is empty"),
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
