//! Switchboard operator library: the `SignalingCluster` API, pure builders of the objects it
//! owns, the rendered server config, the status calculator, and the controller around them.
#![forbid(unsafe_code)]

pub mod api;
pub mod conditions;
pub mod config;
#[cfg(test)]
mod fake_api;
pub mod names;
pub mod resolve;
pub mod resources;
#[cfg(test)]
mod test_support;
// runtime (operator-runtime)
pub mod apply;
pub mod backoff;
pub mod context;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;

use kube::CustomResourceExt;

/// The CRD manifest for `SignalingCluster`, as YAML (what `switchboard-operator crd` prints and
/// what is committed at `crds/switchboard.dev_signalingclusters.yaml`).
pub fn try_crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&api::SignalingCluster::crd())
}
