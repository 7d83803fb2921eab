//! The `<name>-server` Deployment: hardened, probed server pods that mount the config Secret
//! and roll when (and only when) the config bytes change.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{labels, selector_labels, BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::config::{RenderedConfig, MOUNT_DIR};
use crate::names::{self, SERVER_PORT};

/// Pod template annotation carrying the sha256 of `config.yaml`.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/config-hash";
/// Path of the config file in the server container.
pub const CONFIG_PATH: &str = "/etc/switchboard/config.yaml";
/// UID/GID the server runs as (the distroless "nonroot" user; the image uses the same).
pub const SERVER_UID: i64 = 65532;
/// Seconds Kubernetes waits after SIGTERM: above the server's 25 s drain timeout.
pub const TERMINATION_GRACE_SECONDS: i64 = 35;

/// The server Deployment for `sc`, annotated with `config.hash`.
pub fn desired_deployment(
    sc: &SignalingCluster,
    config: &RenderedConfig,
) -> Result<Deployment, BuildError> {
    let owner = Owner::of(sc)?;
    let spec = &sc.spec;
    let selector = selector_labels(&owner.name, Component::Server);

    let container = Container {
        name: "server".to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(vec!["--config".to_owned(), CONFIG_PATH.to_owned()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Each pod is one bus instance: the pod name is unique and stable for its lifetime.
        env: Some(vec![EnvVar {
            name: "SWITCHBOARD_INSTANCE_ID".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| default_resources("100m", "64Mi")),
        ),
        liveness_probe: Some(http_probe("/webrtc/health/live", 10, 3)),
        // Not ready while draining or while the bus is down: the Service stops routing new
        // clients to the pod but keeps it running.
        readiness_probe: Some(http_probe("/webrtc/health/ready", 5, 2)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: MOUNT_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    let topology_spread_constraints =
        spec.topology_spread_constraints.clone().unwrap_or_else(|| {
            vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".to_owned(),
                // ScheduleAnyway: a one-node cluster still runs every replica.
                when_unsatisfiable: "ScheduleAnyway".to_owned(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..LabelSelector::default()
                }),
                ..TopologySpreadConstraint::default()
            }]
        });

    let pod = PodSpec {
        containers: vec![container],
        // The server never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        // Service links would inject `<SERVICE>_PORT`-style env vars, and env vars beat the
        // config file in the server's precedence order.
        enable_service_links: Some(false),
        security_context: Some(non_root_pod_security(SERVER_UID)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        image_pull_secrets: non_empty(spec.image_pull_secrets.clone()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: non_empty(spec.tolerations.clone()),
        affinity: spec.affinity.clone(),
        topology_spread_constraints: non_empty(topology_spread_constraints),
        volumes: Some(vec![
            Volume {
                name: "config".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names::config(&owner.name)),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };

    // Only the config hash goes into the template's annotations: no operator version and no
    // timestamps, so upgrading the operator does not restart every signaling pod.
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&owner.name, Component::Server)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                config.hash.clone(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };

    Ok(Deployment {
        metadata: owner.meta(names::server(&owner.name), Component::Server),
        spec: Some(DeploymentSpec {
            // With an HPA the replica count is its business; leaving the field out of our
            // apply releases our ownership so the two managers do not fight.
            replicas: (!spec.autoscaling.enabled).then_some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // Surge first so a rollout never drops serving capacity.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The restricted-Pod-Security container context shared by server and Redis containers.
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// Pod security context of the `restricted` Pod Security Standard, running as `uid`.
pub(crate) fn non_root_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

pub(crate) fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// Requests only: a CPU request is what an HPA's utilization target is measured against.
pub(crate) fn default_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

pub(crate) fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}
