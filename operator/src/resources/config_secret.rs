//! The `<name>-config` Secret holding the rendered `config.yaml` (and, for RS256/ES256, the JWT
//! public key). A Secret rather than a ConfigMap because the file carries keys inline.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::config::{RenderedConfig, CONFIG_FILE};
use crate::names;

/// The config Secret for `sc`.
pub fn desired_config_secret(
    sc: &SignalingCluster,
    config: &RenderedConfig,
) -> Result<Secret, BuildError> {
    let owner = Owner::of(sc)?;
    let mut data = BTreeMap::from([(
        CONFIG_FILE.to_owned(),
        ByteString(config.yaml.clone().into_bytes()),
    )]);
    for (key, content) in &config.extra_files {
        data.insert(key.clone(), ByteString(content.clone().into_bytes()));
    }
    Ok(Secret {
        metadata: owner.meta(names::config(&owner.name), Component::Server),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}
