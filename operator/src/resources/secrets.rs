//! The Secrets the operator generates (JWT HS256 key, TURN shared secret, Redis password).
//! Random bytes come in as an argument so the builder stays pure; the runtime draws them from a
//! CSPRNG, creates the Secret only when it is absent, and never overwrites it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{names, BuildError, Component, Owner, GENERATED_ANNOTATION};
use crate::api::{JwtAlgorithm, SignalingCluster};

/// One of the Secrets the operator generates when the spec does not reference one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GeneratedSecret {
    /// `<name>-jwt`, key `secret`: the HS256 signing key (when `auth.secretRef` is unset).
    Jwt,
    /// `<name>-turn`, key `secret`: the TURN REST shared secret (TURN URLs without a ref).
    Turn,
    /// `<name>-redis-auth`, key `password`: the managed Redis password.
    RedisPassword,
}

impl GeneratedSecret {
    /// How many random bytes the runtime should pass to [`desired_generated_secret`].
    pub const RANDOM_BYTES: usize = 32;

    /// Name of this Secret for cluster `cluster`.
    pub fn secret_name(self, cluster: &str) -> String {
        match self {
            Self::Jwt => names::jwt(cluster),
            Self::Turn => names::turn(cluster),
            Self::RedisPassword => names::redis_auth(cluster),
        }
    }

    /// The key holding the value.
    pub fn key(self) -> &'static str {
        match self {
            Self::Jwt | Self::Turn => "secret",
            Self::RedisPassword => "password",
        }
    }

    fn component(self) -> Component {
        match self {
            Self::Jwt | Self::Turn => Component::Server,
            Self::RedisPassword => Component::Redis,
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
    out
}

/// The generated Secret `kind` of this cluster holding `random` (hex-encoded, so the value is
/// printable and safe in a Redis URL or a config file). Owned by the cluster, so it is garbage
/// collected with it, and annotated `switchboard.dev/generated: "true"`.
pub fn desired_generated_secret(
    sc: &SignalingCluster,
    kind: GeneratedSecret,
    random: &[u8],
) -> Result<Secret, BuildError> {
    let owner = Owner::of(sc)?;
    let mut meta = owner.meta(kind.secret_name(&owner.name), kind.component());
    meta.annotations = Some(BTreeMap::from([(
        GENERATED_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    Ok(Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            kind.key().to_owned(),
            ByteString(hex::encode(random).into_bytes()),
        )])),
        ..Secret::default()
    })
}
