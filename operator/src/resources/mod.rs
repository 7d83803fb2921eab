//! Pure `desired_*` builders for every object a `SignalingCluster` owns, one file per kind,
//! plus the labels and owner reference they share (names live in `crate::names`). Nothing here talks to the API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::SignalingCluster;
use crate::config::RenderedConfig;
use crate::names::FIELD_MANAGER;

mod config_secret;
mod deployment;
mod hpa;
mod ingress;
mod network_policy;
mod pdb;
mod redis;
mod secrets;
mod service;

pub use config_secret::desired_config_secret;
pub use deployment::{desired_deployment, CONFIG_HASH_ANNOTATION, CONFIG_PATH};
pub use hpa::desired_hpa;
pub use ingress::{desired_ingress, WEBSOCKET_TIMEOUT_ANNOTATIONS};
pub use network_policy::desired_network_policy;
pub use pdb::desired_pdb;
pub use redis::{desired_redis_service, desired_redis_statefulset};
pub use secrets::desired_generated_secret;
pub use service::{desired_service, endpoint};

/// Annotation marking a Secret the operator generated (and may therefore own).
pub const GENERATED_ANNOTATION: &str = "switchboard.dev/generated";

/// The two kinds of pods a cluster runs; the value of `app.kubernetes.io/component`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Server,
    Redis,
}

impl Component {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Redis => "redis",
        }
    }
}

/// Why a builder could not produce an object: the cluster object lacks server-set metadata.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// The object has no `metadata.<field>` (it was not read back from the API server).
    #[error(
        "SignalingCluster has no metadata.{0}; build children only from objects read from the API"
    )]
    MissingMetadata(&'static str),
}

/// Every object the operator wants for a cluster at this moment. `None` means the object must
/// not exist (the runtime deletes it if it does).
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_secret: k8s_openapi::api::core::v1::Secret,
    pub deployment: k8s_openapi::api::apps::v1::Deployment,
    pub service: k8s_openapi::api::core::v1::Service,
    pub ingress: Option<k8s_openapi::api::networking::v1::Ingress>,
    pub hpa: Option<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>,
    pub pdb: Option<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
    pub redis_statefulset: Option<k8s_openapi::api::apps::v1::StatefulSet>,
    pub redis_service: Option<k8s_openapi::api::core::v1::Service>,
}

/// Builds every child (except the generated Secrets, which are created once, see
/// [`desired_generated_secret`]) from the cluster and its rendered config.
pub fn desired_children(
    sc: &SignalingCluster,
    config: &RenderedConfig,
) -> Result<Children, BuildError> {
    Ok(Children {
        config_secret: desired_config_secret(sc, config)?,
        deployment: desired_deployment(sc, config)?,
        service: desired_service(sc)?,
        ingress: desired_ingress(sc)?,
        hpa: desired_hpa(sc)?,
        pdb: desired_pdb(sc)?,
        network_policy: desired_network_policy(sc)?,
        redis_statefulset: desired_redis_statefulset(sc)?,
        redis_service: desired_redis_service(sc)?,
    })
}

/// The labels every child of cluster `instance` carries.
pub fn labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(instance, component);
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    l
}

/// The subset of [`labels`] used in selectors. Selectors are immutable on Deployments and
/// StatefulSets, so they never include anything that might change.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "switchboard".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// A selector on the [`selector_labels`] of cluster `instance`'s `component` pods.
pub fn pod_selector(instance: &str, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(instance, component)),
        ..LabelSelector::default()
    }
}

/// Name, namespace and controller owner reference of a cluster read from the API.
pub(crate) struct Owner {
    pub name: String,
    pub namespace: String,
    pub owner_ref: OwnerReference,
}

impl Owner {
    pub(crate) fn of(sc: &SignalingCluster) -> Result<Self, BuildError> {
        let name = sc
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let namespace = sc
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let uid = sc
            .metadata
            .uid
            .clone()
            .ok_or(BuildError::MissingMetadata("uid"))?;
        // controller=true lets kube-runtime's `owns()` map child events back to the cluster;
        // blockOwnerDeletion makes foreground deletion wait for the children.
        let owner_ref = OwnerReference {
            api_version: SignalingCluster::api_version(&()).into_owned(),
            kind: SignalingCluster::kind(&()).into_owned(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Ok(Self {
            name,
            namespace,
            owner_ref,
        })
    }

    /// Metadata of a child named `name` with the standard labels.
    pub(crate) fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(&self.name, component)),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }
}
