//! The `SignalingCluster` custom resource: spec and status types, their defaults, and the
//! OpenAPI/CEL validation the API server enforces. No I/O and no reconcile logic live here.
//!
//! Every field has a default so a bare `spec: {}` is a working cluster. Defaults are written
//! both as serde defaults (so Rust code always sees a complete spec) and into the CRD schema
//! (so `kubectl get -o yaml` shows what is in effect and the API server stores it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "switchboard.dev";
/// API version of the resource.
pub const VERSION: &str = "v1alpha1";
/// Redis image used by a managed Redis unless the spec names another.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7-alpine";
/// STUN server the server advertises unless the spec names others.
pub const DEFAULT_STUN_URL: &str = "stun:stun.l.google.com:19302";

// Messages of the CEL rules below, shared with `resolve::check_spec`, which enforces the same
// rules where the API server does not (Kubernetes before 1.25 ignores CEL).
/// CEL message.
pub const MSG_REDIS_EXACTLY_ONE: &str =
    "redis: set exactly one of redis.managed and redis.external";
/// CEL message.
pub const MSG_EXTERNAL_REDIS_SECRET: &str = "redis.external.secretRef is required: name the Secret (and key, default \"url\") holding the redis:// or rediss:// URL";
/// CEL message.
pub const MSG_TURN_URL_SCHEME: &str = "ice.turnUrls: every TURN URL must start with turn: or turns: (e.g. turns:turn.example.com:5349)";
/// CEL message.
pub const MSG_TURN_SECRET_WITHOUT_URLS: &str =
    "ice.turnSecretRef is set but ice.turnUrls is empty: add the TURN server URLs";
/// CEL message.
pub const MSG_RELAY_NEEDS_TURN: &str = "ice.iceTransportPolicy relay needs ice.turnUrls: with relay only, clients can connect only through TURN";
/// CEL message.
pub const MSG_PUBLIC_KEY_REQUIRED: &str = "auth.secretRef is required for RS256/ES256: name the Secret holding the PEM public key (key default \"public.pem\")";
/// CEL message.
pub const MSG_RESUME_SECRET_WITHOUT_RESUME: &str = "resume.secretRef is set but resume.graceSeconds is 0 (resume off): remove resume.secretRef or set resume.graceSeconds above 0";
/// CEL message.
pub const MSG_INGRESS_HOST: &str = "ingress.host is required when ingress.enabled is true";
/// CEL message.
pub const MSG_AUTOSCALING_RANGE: &str =
    "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas";
/// CEL message.
pub const MSG_PDB_ONE_BOUND: &str =
    "podDisruptionBudget: set only one of minAvailable and maxUnavailable";

/// The server image matching this operator's version; the default for `spec.image`.
pub fn default_server_image() -> String {
    format!(
        "ghcr.io/switchboard-dev/switchboard-server:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// A Switchboard signaling cluster: server Deployment, Service, managed or external Redis,
/// rendered configuration and generated secrets, all owned by this resource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "SignalingCluster",
    plural = "signalingclusters",
    singular = "signalingcluster",
    shortname = "sigc",
    category = "switchboard",
    namespaced,
    status = "SignalingClusterStatus",
    derive = "PartialEq",
    cel,
    doc = "A Switchboard WebRTC signaling cluster: servers, Redis, configuration and secrets.",
    // Raw JSON rather than `printcolumn(name = .., type_ = ..)`: clippy's duplicated_attributes
    // lint misfires on repeated keys across the structured form.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Ready Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SignalingClusterSpec {
    /// Number of server pods (ignored while autoscaling is enabled).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Server container image.
    #[serde(default = "default_server_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy of the server container (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "image_pull_policy_schema")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets used to pull the server (and managed Redis) images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU/memory requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The pub/sub bus: a Redis the operator runs (`managed`) or one you provide (`external`).
    #[serde(default)]
    pub redis: RedisSpec,

    /// ICE servers and WebRTC policies handed to clients by `GET /webrtc/config`.
    #[serde(default)]
    pub ice: IceSpec,

    /// How clients' JWTs are verified.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Room limits.
    #[serde(default)]
    pub rooms: RoomsSpec,

    /// Per-connection and per-pod limits of the servers; each unset field keeps the server's
    /// default, which protects a pod out of the box.
    #[serde(default, skip_serializing_if = "LimitsSpec::is_empty")]
    pub limits: LimitsSpec,

    /// Webhooks: signed room and participant events POSTed to your backend (Standard
    /// Webhooks); none when unset.
    #[serde(default, skip_serializing_if = "WebhooksSpec::is_empty")]
    pub webhooks: WebhooksSpec,

    /// Resuming a lost connection: how long a participant waits for its client to come back,
    /// what it may miss meanwhile, and the key of the resume tokens every replica shares.
    /// Unset fields keep the server's defaults (resume on, 30 s).
    #[serde(default, skip_serializing_if = "ResumeSpec::is_empty")]
    pub resume: ResumeSpec,

    /// The Service in front of the server pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// An optional Ingress for the servers.
    #[serde(default)]
    pub ingress: IngressSpec,

    /// An optional HorizontalPodAutoscaler (autoscaling/v2) for the servers.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,

    /// An optional PodDisruptionBudget (policy/v1) for the servers.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,

    /// A NetworkPolicy that lets only this cluster's server pods reach its managed Redis.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Browser origins allowed to open WebSockets (e.g. `https://app.example.com`); empty or
    /// `*` = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|https?://[^\s/]+/?)$")
        )
    )]
    pub allowed_origins: Vec<String>,

    /// Node labels the server pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Topology spread of the server pods. Unset: spread across nodes
    /// (`kubernetes.io/hostname`, maxSkew 1, ScheduleAnyway). An empty list: no constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// Stop reconciling: children are left exactly as they are until this is false again.
    #[serde(default)]
    pub paused: bool,
}

impl Default for SignalingClusterSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: default_server_image(),
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            resources: None,
            redis: RedisSpec::default(),
            ice: IceSpec::default(),
            auth: AuthSpec::default(),
            rooms: RoomsSpec::default(),
            limits: LimitsSpec::default(),
            webhooks: WebhooksSpec::default(),
            resume: ResumeSpec::default(),
            service: ServiceSpec::default(),
            ingress: IngressSpec::default(),
            autoscaling: AutoscalingSpec::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            allowed_origins: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: None,
            paused: false,
        }
    }
}

fn default_replicas() -> i32 {
    2
}

/// Schema of the optional pull policy: a plain string enum. schemars would put `null` into the
/// `enum` of an `Option<enum>`, which Kubernetes 1.20's CRD conversion chokes on (the CRD is then
/// refused with "per-version schemas may not all be set to identical values").
fn image_pull_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Always", "IfNotPresent", "Never"],
    })
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects in a container spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A key in a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the SignalingCluster).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret; each reference documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key, or `default` when the reference does not name one.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// The Redis pub/sub bus. Exactly one of `managed` and `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("has(self.managed) != has(self.external)")
        .message(MSG_REDIS_EXACTLY_ONE)
)]
pub struct RedisSpec {
    /// A Redis StatefulSet run by the operator, with a generated password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedisSpec>,
    /// A Redis you run; its URL comes from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedisSpec>,
    /// Prefix of every Redis key and channel; give clusters sharing one Redis different ones.
    #[serde(default = "default_key_prefix")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$"))]
    pub key_prefix: String,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            managed: Some(ManagedRedisSpec::default()),
            external: None,
            key_prefix: default_key_prefix(),
        }
    }
}

fn default_key_prefix() -> String {
    "switchboard".to_owned()
}

/// A Redis run by the operator as a one-replica StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedisSpec {
    /// Redis image.
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// CPU/memory requests and limits of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Keep Redis data on a PersistentVolumeClaim (append-only file). Unset: an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceSpec>,
}

impl Default for ManagedRedisSpec {
    fn default() -> Self {
        Self {
            image: default_redis_image(),
            resources: None,
            persistence: None,
        }
    }
}

fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_owned()
}

/// A PersistentVolumeClaim for the managed Redis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Requested storage, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_persistence_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the claim; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_persistence_size() -> String {
    "1Gi".to_owned()
}

/// A Redis the user runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("has(self.secretRef)")
        .message(MSG_EXTERNAL_REDIS_SECRET)
)]
pub struct ExternalRedisSpec {
    /// Secret key holding the Redis URL (`redis://` or `rediss://`, password included);
    /// key defaults to `url`. With `cluster: true`, the comma-separated seed URLs of a Redis
    /// Cluster instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The Secret names a Redis Cluster (Redis 7 or later) by its seed nodes: the servers use
    /// sharded pub/sub on the shard owning each room's slot (`redis_cluster_urls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

/// ICE servers and WebRTC policies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.turnUrls.all(u, u.startsWith('turn:') || u.startsWith('turns:'))")
        .message(MSG_TURN_URL_SCHEME),
    validation = Rule::new("!has(self.turnSecretRef) || size(self.turnUrls) > 0")
        .message(MSG_TURN_SECRET_WITHOUT_URLS),
    validation = Rule::new("self.iceTransportPolicy != 'relay' || size(self.turnUrls) > 0")
        .message(MSG_RELAY_NEEDS_TURN)
)]
pub struct IceSpec {
    /// STUN server URLs (`stun:` or `stuns:`).
    #[serde(default = "default_stun_urls")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^stuns?:[^\s]{1,500}$")))]
    pub stun_urls: Vec<String>,
    /// TURN server URLs (`turn:` or `turns:`).
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 512)))]
    pub turn_urls: Vec<String>,
    /// Secret key holding the TURN REST shared secret (coturn `static-auth-secret`); key
    /// defaults to `secret`. Unset with TURN URLs: generated into `<name>-turn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_secret_ref: Option<SecretKeyRef>,
    /// Lifetime of the TURN credentials handed out (never beyond the JWT's expiry).
    #[serde(default = "default_credential_ttl")]
    #[schemars(range(min = 60, max = 604800))]
    pub credential_ttl_seconds: i64,
    /// `all` or `relay` (TURN only; needs `turnUrls`).
    #[serde(default)]
    pub ice_transport_policy: IceTransportPolicy,
    /// `balanced`, `max-compat` or `max-bundle`.
    #[serde(default)]
    pub bundle_policy: BundlePolicy,
    /// `require` or `negotiate`.
    #[serde(default)]
    pub rtcp_mux_policy: RtcpMuxPolicy,
}

impl Default for IceSpec {
    fn default() -> Self {
        Self {
            stun_urls: default_stun_urls(),
            turn_urls: Vec::new(),
            turn_secret_ref: None,
            credential_ttl_seconds: default_credential_ttl(),
            ice_transport_policy: IceTransportPolicy::default(),
            bundle_policy: BundlePolicy::default(),
            rtcp_mux_policy: RtcpMuxPolicy::default(),
        }
    }
}

fn default_stun_urls() -> Vec<String> {
    vec![DEFAULT_STUN_URL.to_owned()]
}

fn default_credential_ttl() -> i64 {
    86400
}

/// Which ICE candidates clients may use.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum IceTransportPolicy {
    #[default]
    All,
    Relay,
}

/// WebRTC bundle policy handed to clients.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum BundlePolicy {
    #[default]
    Balanced,
    MaxCompat,
    MaxBundle,
}

/// WebRTC RTCP multiplexing policy handed to clients.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RtcpMuxPolicy {
    #[default]
    Require,
    Negotiate,
}

impl IceTransportPolicy {
    /// The spelling used in the CRD and in the server's config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Relay => "relay",
        }
    }
}

impl BundlePolicy {
    /// The spelling used in the CRD and in the server's config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Balanced => "balanced",
            Self::MaxCompat => "max-compat",
            Self::MaxBundle => "max-bundle",
        }
    }
}

impl RtcpMuxPolicy {
    /// The spelling used in the CRD and in the server's config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Require => "require",
            Self::Negotiate => "negotiate",
        }
    }
}

/// JWT signature algorithm.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (generated when no secretRef is given).
    #[default]
    HS256,
    /// RSA signature; secretRef points at the PEM public key.
    RS256,
    /// ECDSA P-256 signature; secretRef points at the PEM public key.
    ES256,
}

impl JwtAlgorithm {
    /// The spelling used in the CRD and in the server's config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }
}

/// How the servers verify clients' JWTs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.algorithm == 'HS256' || has(self.secretRef)")
        .message(MSG_PUBLIC_KEY_REQUIRED)
)]
pub struct AuthSpec {
    /// `HS256`, `RS256` or `ES256`.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// HS256: Secret key holding the shared secret (key default `secret`; unset: generated
    /// into `<name>-jwt`). RS256/ES256: Secret key holding the PEM public key (key default
    /// `public.pem`; required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Required `iss` claim; unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// Required `aud` claim; unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
}

/// Room limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomsSpec {
    /// Participants per room, across all servers; the next join is refused with `room_full`.
    #[serde(default = "default_max_participants")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_participants: i32,
    /// Seconds a dead server's participants stay listed before another server removes them.
    #[serde(default = "default_presence_ttl")]
    #[schemars(range(min = 5, max = 3600))]
    pub presence_ttl_seconds: i32,
}

impl Default for RoomsSpec {
    fn default() -> Self {
        Self {
            max_participants: default_max_participants(),
            presence_ttl_seconds: default_presence_ttl(),
        }
    }
}

fn default_max_participants() -> i32 {
    50
}

fn default_presence_ttl() -> i32 {
    30
}

/// Per-connection and per-pod server limits. Every field is optional: unset keeps the server's
/// default (shown in brackets in each description).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest client message in bytes; larger closes with 1009 [65536].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 16777216))]
    pub max_message_bytes: Option<i64>,
    /// Messages per second per connection [50].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_per_second: Option<i64>,
    /// Message burst per connection [200].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_burst: Option<i64>,
    /// Delivered bytes (size × recipients) per second per connection [262144].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_bytes_per_second: Option<i64>,
    /// Delivered-bytes burst per connection [524288].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_bytes_burst: Option<i64>,
    /// Deepest array/object nesting in a client message [32].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 1024))]
    pub max_json_depth: Option<i64>,
    /// Largest participant metadata (token claim or server API update), compact JSON bytes;
    /// a larger claim is closed with 1008 `metadata_too_large` [1024].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 65536))]
    pub max_metadata_bytes: Option<i64>,
    /// Longest session whatever its token, in seconds; 0 = no limit [0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_session_seconds: Option<i64>,
    /// Queued outbound messages per connection [256].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub outbound_queue_messages: Option<i64>,
    /// Queued outbound bytes per connection [1048576].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub outbound_queue_bytes: Option<i64>,
    /// Bytes the WebSocket layer may hold unsent per connection, control-frame replies
    /// included [1048576].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096))]
    pub write_buffer_bytes: Option<i64>,
    /// Seconds between WebSocket pings [20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub ping_interval_seconds: Option<i64>,
    /// Seconds a peer may stay silent after a ping before it is dropped [20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub ping_timeout_seconds: Option<i64>,
    /// Milliseconds a closing client gets to answer the close handshake [5000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub close_timeout_ms: Option<i64>,
    /// Open connections per server pod; more get HTTP 503 [10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i64>,
    /// Open connections per client address per pod (the address from `X-Forwarded-For` of the
    /// in-cluster proxies); more get HTTP 429 [100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_ip: Option<i64>,
    /// Connections one user (the token's `sub`) may hold in one room, across all servers; the
    /// next is closed with 1008 `user_room_limit`; 0 = no limit [5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_user_connections_per_room: Option<i64>,
    /// Connections one user (the token's `sub`) may hold on one server pod, all rooms; the next
    /// is closed with 1008 `user_instance_limit`; 0 = no limit [20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_user_connections_per_pod: Option<i64>,
    /// Milliseconds a client gets to send its request head [10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub header_read_timeout_ms: Option<i64>,
    /// Milliseconds a client gets to send a whole request body after its head; then HTTP 408
    /// [10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 600000))]
    pub body_read_timeout_ms: Option<i64>,
    /// Largest request head in bytes; larger gets HTTP 431 [16384].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8192, max = 1048576))]
    pub max_header_bytes: Option<i64>,
}

impl LimitsSpec {
    /// Nothing set: every server default applies.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Where the servers send webhooks; see docs/webhooks.md. Unset fields keep the server's
/// defaults (shown in brackets).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksSpec {
    /// The endpoints, each with its own signing secret and event filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub endpoints: Vec<WebhookEndpointSpec>,
    /// Time an endpoint has to answer one request, milliseconds [15000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 300000))]
    pub timeout_ms: Option<i64>,
    /// An undelivered event is retried until it is this old, then dropped, seconds [3600].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub retry_horizon_seconds: Option<i64>,
}

impl WebhooksSpec {
    /// Nothing set: no webhooks.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One webhook endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointSpec {
    /// `http://` or `https://` URL the events are POSTed to.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Labels this endpoint in metrics and logs; unset: host, port and path of the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub name: Option<String>,
    /// Secret key holding the Standard Webhooks signing secret (`whsec_` + base64 of 24 to 64
    /// random bytes); key defaults to `secret`.
    pub secret_ref: SecretKeyRef,
    /// Event types sent (`room_started`, `room_finished`, `participant_joined`,
    /// `participant_left`, `participant_updated`); empty: every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub events: Vec<WebhookEventType>,
}

/// A webhook event type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEventType {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
}

impl WebhookEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoomStarted => "room_started",
            Self::RoomFinished => "room_finished",
            Self::ParticipantJoined => "participant_joined",
            Self::ParticipantLeft => "participant_left",
            Self::ParticipantUpdated => "participant_updated",
        }
    }
}

/// Longest `resume.graceSeconds`.
pub const RESUME_GRACE_MAX: i64 = 3600;
/// Largest `resume.inboxMessages`.
pub const RESUME_INBOX_MESSAGES_MAX: i64 = 65536;
/// Smallest `resume.inboxBytes` (below a KiB is a unit mistake, not a choice).
pub const RESUME_INBOX_BYTES_MIN: i64 = 1024;
/// Largest `resume.inboxBytes`.
pub const RESUME_INBOX_BYTES_MAX: i64 = 67108864;

/// Resuming a lost connection (docs/protocol.md, "Resume"). Every unset field keeps the
/// server's default (shown in brackets).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.secretRef) || !has(self.graceSeconds) || self.graceSeconds > 0")
        .message(MSG_RESUME_SECRET_WITHOUT_RESUME)
)]
pub struct ResumeSpec {
    /// How long a participant whose connection was lost stays in its rooms, receiving into its
    /// inbox, waiting for its client to resume; then it leaves (`user-left`, reason `timeout`).
    /// Seconds; 0 = no resume [30].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = RESUME_GRACE_MAX))]
    pub grace_seconds: Option<i64>,
    /// Messages kept per participant for a resume; a client that missed more is refused
    /// (`resume_overflow`) and joins fresh [256].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = RESUME_INBOX_MESSAGES_MAX))]
    pub inbox_messages: Option<i64>,
    /// Bytes of those messages kept per participant [1048576].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = RESUME_INBOX_BYTES_MIN, max = RESUME_INBOX_BYTES_MAX))]
    pub inbox_bytes: Option<i64>,
    /// Secret key holding the resume token key (HMAC-SHA256, at least 32 bytes); key defaults
    /// to `secret`. Unset: derived from the HS256 JWT key, or with RS256/ES256 generated into
    /// `<name>-resume`, so a client resumes on any replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

impl ResumeSpec {
    /// Nothing set: every server default applies.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether clients may resume (`graceSeconds` unset or above 0).
    pub fn enabled(&self) -> bool {
        self.grace_seconds != Some(0)
    }
}

/// The server Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on (the pods listen on 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra annotations on the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// Kubernetes Service type.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes expects in a Service spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// An Ingress (networking.k8s.io/v1) routing `host` to the server Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!self.enabled || has(self.host)")
        .message(MSG_INGRESS_HOST)
)]
pub struct IngressSpec {
    /// Create the Ingress.
    #[serde(default)]
    pub enabled: bool,
    /// IngressClass name; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Host name clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: Option<String>,
    /// Secret holding the TLS certificate for `host`; unset: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// Extra annotations; they override the operator's WebSocket timeout defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A HorizontalPodAutoscaler on CPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message(MSG_AUTOSCALING_RANGE)
)]
pub struct AutoscalingSpec {
    /// Create the HPA (spec.replicas is then ignored).
    #[serde(default)]
    pub enabled: bool,
    /// Lower bound of server pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Upper bound of server pods.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilization (percent of requests) the HPA aims for.
    #[serde(default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 100))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_cpu_utilization_percentage: default_target_cpu(),
        }
    }
}

fn default_min_replicas() -> i32 {
    2
}

fn default_max_replicas() -> i32 {
    10
}

fn default_target_cpu() -> i32 {
    70
}

/// A PodDisruptionBudget for the server pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))")
        .message(MSG_PDB_ONE_BOUND)
)]
pub struct PodDisruptionBudgetSpec {
    /// Create the PDB.
    #[serde(default)]
    pub enabled: bool,
    /// Pods (number or percentage) that must stay available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods (number or percentage) that may be unavailable; default 1 when neither is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// The Redis NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create a NetworkPolicy so only this cluster's server pods reach its managed Redis
    /// (needs a CNI that enforces NetworkPolicy; no effect with an external Redis).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalingClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Server pods that exist (from the Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Server pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Where clients connect: `wss://host` with an Ingress, else the in-cluster Service URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `Ready`, `ConfigValid`, `RedisReady`, `ServersReady` (and `Paused` while paused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
