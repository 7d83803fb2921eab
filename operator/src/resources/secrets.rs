//! The Secrets the operator generates (JWT HS256 key, TURN shared secret, Redis password, resume
//! token key). Random bytes come in as an argument so the builder stays pure; the runtime draws
//! them from a CSPRNG, creates the Secret only when it is absent, and never overwrites it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{BuildError, Component, Owner, GENERATED_ANNOTATION};
use crate::api::SignalingCluster;
use crate::names::GeneratedSecret;

/// The pod component a generated Secret belongs to (its labels).
fn component(kind: GeneratedSecret) -> Component {
    match kind {
        GeneratedSecret::Jwt | GeneratedSecret::Turn | GeneratedSecret::Resume => Component::Server,
        GeneratedSecret::RedisPassword => Component::Redis,
    }
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
    let mut meta = owner.meta(kind.secret_name(&owner.name), component(kind));
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
