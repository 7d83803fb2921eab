//! Fixtures shared by the operator's integration tests: clusters "read back from the API"
//! (name, namespace, uid set) and the Secrets the runtime would have fetched. `rig.rs`,
//! `operator.rs` and `observe.rs` next to this file are the e2e's (declared by `e2e_rig.rs`
//! only, so the other test binaries do not compile them).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::core::ObjectMeta;
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::names::generated_secrets_needed;
use switchboard_operator::resources::desired_generated_secret;

pub mod http;
pub mod openapi;

pub const NAMESPACE: &str = "media";
pub const UID: &str = "0f9c6a52-6a1e-4f0e-9d55-4a3b2c1d0e9f";

/// Parses a manifest and adds what the API server would set.
pub fn cluster_from_yaml(yaml: &str) -> SignalingCluster {
    let mut sc: SignalingCluster = serde_yaml::from_str(yaml).expect("manifest parses");
    sc.metadata
        .namespace
        .get_or_insert_with(|| NAMESPACE.to_owned());
    sc.metadata.uid = Some(UID.to_owned());
    sc.metadata.generation = Some(1);
    sc
}

/// A bare `spec: {}` cluster named `name`.
pub fn bare(name: &str) -> SignalingCluster {
    cluster_from_yaml(&format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata:\n  name: {name}\nspec: {{}}\n"
    ))
}

/// Deterministic stand-in for the runtime's CSPRNG output.
pub fn fake_random(seed: u8) -> Vec<u8> {
    (0..32u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(seed))
        .collect()
}

pub fn secret(name: &str, pairs: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The generated Secrets this cluster needs (as the runtime would create them) plus `extra`.
pub fn secrets_for(sc: &SignalingCluster, extra: Vec<Secret>) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    for (i, g) in generated_secrets_needed(sc).into_iter().enumerate() {
        let s = desired_generated_secret(sc, g, &fake_random(i as u8)).expect("builds");
        out.insert(s.metadata.name.clone().expect("named"), s);
    }
    for s in extra {
        out.insert(s.metadata.name.clone().expect("named"), s);
    }
    out
}
