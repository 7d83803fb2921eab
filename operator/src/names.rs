//! The names a `SignalingCluster` hands out: its children's names, the Secrets the operator
//! generates (name and key), the ports of the servers and the managed Redis, and the field
//! manager every write carries. A leaf: it depends on the API types only, so every other
//! module (builders, resolution, status, runtime) can name things without importing another.

use crate::api::{JwtAlgorithm, SignalingCluster};

/// Field manager of every write the operator makes (and the `managed-by` label value).
pub const FIELD_MANAGER: &str = "switchboard-operator";
/// Port the server listens on in the pod (named `http`).
pub const SERVER_PORT: i32 = 8080;
/// Port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;

/// Deployment, Service, HPA, PDB and Ingress of the servers.
pub fn server(name: &str) -> String {
    format!("{name}-server")
}

/// Secret holding `config.yaml`.
pub fn config(name: &str) -> String {
    format!("{name}-config")
}

/// Managed Redis StatefulSet, Service and NetworkPolicy.
pub fn redis(name: &str) -> String {
    format!("{name}-redis")
}

/// The managed Redis pod (the StatefulSet's only ordinal).
pub fn redis_pod(name: &str) -> String {
    format!("{}-0", redis(name))
}

/// Generated Redis password Secret (key `password`).
pub fn redis_auth(name: &str) -> String {
    format!("{name}-redis-auth")
}

/// Generated JWT HS256 key Secret (key `secret`).
pub fn jwt(name: &str) -> String {
    format!("{name}-jwt")
}

/// Generated TURN shared secret Secret (key `secret`).
pub fn turn(name: &str) -> String {
    format!("{name}-turn")
}

/// Generated resume token key Secret (key `secret`).
pub fn resume(name: &str) -> String {
    format!("{name}-resume")
}

/// Key of a generated shared secret (JWT HS256 key, TURN secret, resume key), and the default key of a
/// referenced one.
pub const SECRET_KEY: &str = "secret";
/// Key of the generated Redis password.
pub const PASSWORD_KEY: &str = "password";

/// One of the Secrets the operator generates when the spec does not reference one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GeneratedSecret {
    /// `<name>-jwt`, key `secret`: the HS256 signing key (when `auth.secretRef` is unset).
    Jwt,
    /// `<name>-turn`, key `secret`: the TURN REST shared secret (TURN URLs without a ref).
    Turn,
    /// `<name>-redis-auth`, key `password`: the managed Redis password.
    RedisPassword,
    /// `<name>-resume`, key `secret`: the resume token key, shared by every replica (RS256/ES256
    /// with resume on and no `resume.secretRef`; with HS256 the servers derive it from the JWT
    /// key).
    Resume,
}

impl GeneratedSecret {
    /// How many random bytes the runtime passes to the builder of a generated Secret.
    pub const RANDOM_BYTES: usize = 32;

    /// Name of this Secret for cluster `cluster`.
    pub fn secret_name(self, cluster: &str) -> String {
        match self {
            Self::Jwt => jwt(cluster),
            Self::Turn => turn(cluster),
            Self::RedisPassword => redis_auth(cluster),
            Self::Resume => resume(cluster),
        }
    }

    /// The key holding the value.
    pub fn key(self) -> &'static str {
        match self {
            Self::Jwt | Self::Turn | Self::Resume => SECRET_KEY,
            Self::RedisPassword => PASSWORD_KEY,
        }
    }
}

/// The Secrets this spec needs generated, in a stable order.
pub fn generated_secrets_needed(sc: &SignalingCluster) -> Vec<GeneratedSecret> {
    let spec = &sc.spec;
    let mut out = Vec::new();
    if spec.auth.algorithm == JwtAlgorithm::HS256 && spec.auth.secret_ref.is_none() {
        out.push(GeneratedSecret::Jwt);
    }
    if !spec.ice.turn_urls.is_empty() && spec.ice.turn_secret_ref.is_none() {
        out.push(GeneratedSecret::Turn);
    }
    if spec.redis.managed.is_some() {
        out.push(GeneratedSecret::RedisPassword);
    }
    // Without a shared HS256 key each server would draw its own resume key, and a client could
    // resume only on the replica it lost: every replica needs the same one.
    if spec.auth.algorithm != JwtAlgorithm::HS256
        && spec.resume.enabled()
        && spec.resume.secret_ref.is_none()
    {
        out.push(GeneratedSecret::Resume);
    }
    out
}
