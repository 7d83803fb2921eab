//! The optional `<name>-server` PodDisruptionBudget (policy/v1).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{pod_selector, BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names;

/// The PDB for `sc`, or `None` when `podDisruptionBudget.enabled` is false. With neither bound
/// set it allows one pod down at a time.
pub fn desired_pdb(sc: &SignalingCluster) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let spec = &sc.spec.pod_disruption_budget;
    if !spec.enabled {
        return Ok(None);
    }
    let owner = Owner::of(sc)?;
    let (min_available, max_unavailable) = match (&spec.min_available, &spec.max_unavailable) {
        (None, None) => (None, Some(IntOrString::Int(1))),
        (min, max) => (min.clone(), max.clone()),
    };
    Ok(Some(PodDisruptionBudget {
        metadata: owner.meta(names::server(&owner.name), Component::Server),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(pod_selector(&owner.name, Component::Server)),
            min_available,
            max_unavailable,
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }))
}
