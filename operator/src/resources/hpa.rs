//! The optional `<name>-server` HorizontalPodAutoscaler (autoscaling/v2) on CPU utilization.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};

use super::{BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names;

/// The HPA for `sc`, or `None` when `autoscaling.enabled` is false.
pub fn desired_hpa(sc: &SignalingCluster) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let spec = &sc.spec.autoscaling;
    if !spec.enabled {
        return Ok(None);
    }
    let owner = Owner::of(sc)?;
    Ok(Some(HorizontalPodAutoscaler {
        metadata: owner.meta(names::server(&owner.name), Component::Server),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: names::server(&owner.name),
            },
            min_replicas: Some(spec.min_replicas),
            max_replicas: spec.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(spec.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }))
}
