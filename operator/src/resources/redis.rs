//! The managed Redis: a one-replica `<name>-redis` StatefulSet with a password from the
//! generated `<name>-redis-auth` Secret, and its `<name>-redis` Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::{
    container_security_context, default_resources, non_empty, non_root_pod_security,
};
use super::{labels, selector_labels, BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names::{self, GeneratedSecret, REDIS_PORT};

/// UID/GID of the `redis` user in the official images.
pub const REDIS_UID: i64 = 999;

/// The managed Redis StatefulSet, or `None` with an external Redis.
pub fn desired_redis_statefulset(sc: &SignalingCluster) -> Result<Option<StatefulSet>, BuildError> {
    let Some(managed) = sc.spec.redis.managed.as_ref() else {
        return Ok(None);
    };
    let owner = Owner::of(sc)?;
    let name = names::redis(&owner.name);
    let selector = selector_labels(&owner.name, Component::Redis);
    let password = |var: &str| EnvVar {
        name: var.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: GeneratedSecret::RedisPassword.secret_name(&owner.name),
                key: GeneratedSecret::RedisPassword.key().to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let persistent = managed.persistence.is_some();
    // Kubernetes expands `$(REDIS_PASSWORD)` in args, so the password never sits in the spec.
    let mut args: Vec<String> = ["--requirepass", "$(REDIS_PASSWORD)", "--dir", "/data"]
        .map(str::to_owned)
        .into();
    if persistent {
        args.extend(["--appendonly", "yes"].map(str::to_owned));
    } else {
        // Presence and pub/sub are rebuilt by the servers after a restart: no snapshots.
        args.extend(["--save", ""].map(str::to_owned));
    }
    let container = Container {
        name: "redis".to_owned(),
        image: Some(managed.image.clone()),
        image_pull_policy: sc.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(args),
        // REDISCLI_AUTH lets the probe's redis-cli authenticate without a password argument.
        env: Some(vec![password("REDIS_PASSWORD"), password("REDISCLI_AUTH")]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_owned()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(
            managed
                .resources
                .clone()
                .unwrap_or_else(|| default_resources("50m", "64Mi")),
        ),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(
                    ["sh", "-c", "redis-cli ping | grep -q PONG"]
                        .map(str::to_owned)
                        .into(),
                ),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".to_owned()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: "/data".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let volumes = (!persistent).then(|| {
        vec![Volume {
            name: "data".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]
    });
    let claims = managed.persistence.as_ref().map(|p| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                labels: Some(labels(&owner.name, Component::Redis)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: p.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(p.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    Ok(Some(StatefulSet {
        metadata: owner.meta(name.clone(), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // Claims are not owned by the cluster; this deletes them with the StatefulSet.
            persistent_volume_claim_retention_policy: persistent.then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                }
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&owner.name, Component::Redis)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(non_root_pod_security(REDIS_UID)),
                    image_pull_secrets: non_empty(sc.spec.image_pull_secrets.clone()),
                    volumes,
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }))
}

/// The managed Redis Service, or `None` with an external Redis.
pub fn desired_redis_service(sc: &SignalingCluster) -> Result<Option<Service>, BuildError> {
    if sc.spec.redis.managed.is_none() {
        return Ok(None);
    }
    let owner = Owner::of(sc)?;
    Ok(Some(Service {
        metadata: owner.meta(names::redis(&owner.name), Component::Redis),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&owner.name, Component::Redis)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }))
}
