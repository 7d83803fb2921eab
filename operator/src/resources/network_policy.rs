//! The optional `<name>-redis` NetworkPolicy: only this cluster's server pods may reach its
//! managed Redis.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{pod_selector, BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names::{self, REDIS_PORT};

/// The NetworkPolicy for `sc`, or `None` when it is disabled or Redis is external.
pub fn desired_network_policy(sc: &SignalingCluster) -> Result<Option<NetworkPolicy>, BuildError> {
    if !sc.spec.network_policy.enabled || sc.spec.redis.managed.is_none() {
        return Ok(None);
    }
    let owner = Owner::of(sc)?;
    Ok(Some(NetworkPolicy {
        metadata: owner.meta(names::redis(&owner.name), Component::Redis),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector(&owner.name, Component::Redis)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            // A peer with only a podSelector matches pods in the policy's own namespace.
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(pod_selector(&owner.name, Component::Server)),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".to_owned()),
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }))
}
