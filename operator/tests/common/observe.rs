//! What the e2e observes in the rig: ownership and field managers of children, conditions,
//! the Lease holder, resource versions ("wrote nothing"), Events about the cluster, the pod
//! template's config hash; and the kubelet's part (pods marked ready), since the rig has none.
//! Declared by `e2e_rig.rs` only.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry, ObjectMeta};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::names::FIELD_MANAGER;

use crate::rig::{eventually, NS, OPERATOR_NS};

pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid && o.kind == "SignalingCluster" && o.controller == Some(true))
}

/// The operator's managedFields entries on an object.
fn operator_entries(meta: &ObjectMeta) -> impl Iterator<Item = &ManagedFieldsEntry> {
    meta.managed_fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
}

pub fn managed_by_operator(meta: &ObjectMeta) -> bool {
    operator_entries(meta).next().is_some()
}

/// The operator's own managedFields entries (what it last wrote), for "untouched" checks that
/// must ignore writes by the controller-manager (Deployment status, etc.).
pub fn operator_fields(meta: &ObjectMeta) -> Value {
    operator_entries(meta)
        .map(|m| json!({"op": m.operation, "time": m.time.as_ref().map(|t| t.0.to_string()), "sub": m.subresource, "fields": m.fields_v1.as_ref().map(|f| f.0.clone())}))
        .collect()
}

/// Fails unless the operator's managedFields on the cluster show its status written by a
/// server-side apply, and by nothing else of its own (no Update entry owning status).
pub fn ensure_status_applied(sc: &SignalingCluster) -> Result<()> {
    let status: Vec<&ManagedFieldsEntry> = operator_entries(&sc.metadata)
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:status").is_some())
        })
        .collect();
    let applied = !status.is_empty()
        && status
            .iter()
            .all(|m| m.operation.as_deref() == Some("Apply"));
    anyhow::ensure!(
        applied,
        "{}'s status is not (only) the operator's server-side apply: {}",
        sc.name_any(),
        operator_fields(&sc.metadata)
    );
    Ok(())
}

pub fn condition<'a>(sc: &'a SignalingCluster, type_: &str) -> Option<&'a Condition> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub async fn lease_holder(client: &Client, lease: &str) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    Ok(api
        .get_opt(lease)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Writes the Lease as another candidate would (`None` releases it), retrying on conflicts
/// with the operator's own renewals.
pub async fn set_lease_holder(client: &Client, lease: &str, holder: Option<&str>) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    eventually("writing the Lease", Duration::from_secs(10), || async {
        let mut l = api.get(lease).await?;
        let spec = l.spec.get_or_insert_with(Default::default);
        spec.holder_identity = holder.map(str::to_owned);
        spec.lease_duration_seconds = Some(if holder.is_some() { 3600 } else { 1 });
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        match api.replace(lease, &PostParams::default(), &l).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// The metadata of `K` `name` in the scenario's namespace, if it exists, under "Kind name".
async fn meta_of<K>(client: &Client, name: &str) -> Result<(String, Option<ObjectMeta>)>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let what = format!("{} {name}", K::kind(&()));
    let obj = Api::<K>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .with_context(|| format!("get {what}"))?;
    Ok((what, obj.map(|o| o.meta().clone())))
}

/// sc1's children (what its spec asks for, with the user's TURN Secret referenced): each
/// with its metadata, `None` when it does not exist.
pub async fn sc1_children(client: &Client) -> Result<Vec<(String, Option<ObjectMeta>)>> {
    Ok(vec![
        meta_of::<Deployment>(client, "sc1-server").await?,
        meta_of::<Service>(client, "sc1-server").await?,
        meta_of::<StatefulSet>(client, "sc1-redis").await?,
        meta_of::<Service>(client, "sc1-redis").await?,
        meta_of::<NetworkPolicy>(client, "sc1-redis").await?,
        meta_of::<Secret>(client, "sc1-config").await?,
        meta_of::<Secret>(client, "sc1-jwt").await?,
        meta_of::<Secret>(client, "sc1-redis-auth").await?,
    ])
}

/// Resource versions of the cluster, everything it owns and the user's TURN Secret; an object
/// that does not exist is an error.
pub async fn snapshot(client: &Client) -> Result<BTreeMap<String, String>> {
    let mut all = sc1_children(client).await?;
    all.push(meta_of::<SignalingCluster>(client, "sc1").await?);
    all.push(meta_of::<Secret>(client, "turn-user").await?);
    all.into_iter()
        .map(|(what, meta)| {
            let meta = meta.with_context(|| format!("{what} does not exist"))?;
            Ok((what, meta.resource_version.unwrap_or_default()))
        })
        .collect()
}

/// Marks the cluster's pods Running and Ready, as a kubelet would (there is none in the rig).
pub async fn make_pods_ready(client: &Client) -> Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sc1"))
        .await?;
    let mut n = 0;
    for p in list {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}
        ]}});
        pods.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

/// One Event about sc1.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterEvent {
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub count: i32,
}

/// Events about sc1, sorted.
pub async fn cluster_events(client: &Client) -> Result<Vec<ClusterEvent>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut out: Vec<ClusterEvent> = api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("SignalingCluster") && r.name.as_deref() == Some("sc1")
            })
        })
        .map(|e| ClusterEvent {
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
            count: e.series.map(|s| s.count).unwrap_or(1),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Waits until an event of this type and reason whose note contains `needle` exists.
pub async fn expect_event(client: &Client, type_: &str, reason: &str, needle: &str) -> Result<()> {
    eventually(
        &format!("a {type_} {reason} event whose note contains {needle:?}"),
        Duration::from_secs(20),
        || async {
            Ok(cluster_events(client)
                .await?
                .iter()
                .any(|e| e.type_ == type_ && e.reason == reason && e.note.contains(needle))
                .then_some(()))
        },
    )
    .await
}

pub fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("switchboard.dev/config-hash")
        .cloned()
}

pub fn base64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap_or(Value::Null)
}
