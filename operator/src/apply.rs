//! Server-side apply of one child, and the checks around it: skip the apply when the live
//! object already matches what we last applied (hash annotation plus a subset check), never
//! touch an object this cluster does not own, and delete an optional child that was turned
//! off only when it is ours.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::config::sha256_hex;
use crate::error::{kube_err, Error};
use crate::names::FIELD_MANAGER;

/// Annotation on each child's own metadata (never on the pod template): sha256 of the object
/// the operator last applied. Lets a reconcile skip an apply when nothing changed, while still
/// re-applying when the operator removed a field (which a "desired ⊆ current" check alone
/// would miss).
pub const DESIRED_HASH_ANNOTATION: &str = "switchboard.dev/desired-hash";

/// True when every field of `desired` is present with the same value in `current` (objects:
/// key by key; lists: same length, element by element; scalars: equal). Fields the API
/// server or other managers added to `current` are ignored.
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => d
            .iter()
            .all(|(k, dv)| c.get(k).is_some_and(|cv| is_subset(dv, cv))),
        (Value::Array(d), Value::Array(c)) => {
            d.len() == c.len() && d.iter().zip(c).all(|(dv, cv)| is_subset(dv, cv))
        }
        (d, c) => d == c,
    }
}

/// The desired object as JSON with its hash annotation set.
pub fn with_desired_hash(mut desired: Value) -> Value {
    // The hash covers the object without the annotation itself; serde_json maps are sorted,
    // so the bytes are stable.
    let hash = sha256_hex(desired.to_string().as_bytes());
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(DESIRED_HASH_ANNOTATION.to_owned(), Value::String(hash));
        }
    }
    desired
}

/// Whether an apply of `desired` (with hash) would change nothing we care about.
pub fn up_to_date(desired: &Value, current: &Value) -> bool {
    let want = desired
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DESIRED_HASH_ANNOTATION));
    let have = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DESIRED_HASH_ANNOTATION));
    want.is_some() && want == have && is_subset(desired, current)
}

/// Outcome of [`apply`].
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Created,
    Updated,
}

/// Whether an existing object is this cluster's: it carries our owner reference, or (owner
/// references removed by hand) we applied it before and no other controller owns it.
pub fn is_ours(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner_uid: &str,
) -> bool {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs.iter().any(|o| o.uid == owner_uid) {
        return true;
    }
    let other_controller = refs.iter().any(|o| o.controller == Some(true));
    let applied_by_us = meta
        .managed_fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER));
    !other_controller && applied_by_us
}

/// Server-side applies `desired` unless the live object is already up to date, and returns
/// the live object afterwards. An existing object that is not ours is left alone.
pub(crate) async fn apply<K>(
    api: &Api<K>,
    desired: &K,
    owner_uid: &str,
) -> Result<(K, Applied), Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let ser = |source| Error::Serialize {
        kind,
        name: name.clone(),
        source,
    };
    let body = with_desired_hash(serde_json::to_value(desired).map_err(ser)?);
    let current = api
        .get_opt(&name)
        .await
        .map_err(kube_err("get", kind, &name))?;
    if let Some(cur) = &current {
        if !is_ours(cur.meta(), owner_uid) {
            return Err(Error::NotOwned {
                kind,
                name: name.clone(),
            });
        }
        if up_to_date(&body, &serde_json::to_value(cur).map_err(ser)?) {
            return Ok((cur.clone(), Applied::Unchanged));
        }
    }
    // force: we are the only intended owner of these fields; a conflicting manager (someone
    // editing replicas by hand) is drift to correct, not a reason to fail.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api
        .patch(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(kube_err("apply", kind, &name))?;
    let outcome = match current {
        None => Applied::Created,
        Some(cur) if cur.resource_version() == after.resource_version() => Applied::Unchanged,
        Some(_) => Applied::Updated,
    };
    Ok((after, outcome))
}

/// Applies `desired` when the spec asks for the object (noting the outcome under its kind),
/// else deletes our object `name`; `kind_served` false skips the delete, since nothing of a
/// kind the cluster does not serve can exist. Returns the live object when applied.
pub(crate) async fn apply_or_delete<K>(
    api: &Api<K>,
    desired: Option<&K>,
    name: &str,
    owner_uid: &str,
    kind_served: bool,
    note: &mut impl FnMut(&str, String, Applied),
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    match desired {
        Some(d) => {
            let (live, a) = apply(api, d, owner_uid).await?;
            note(kind_of::<K>(), d.name_any(), a);
            Ok(Some(live))
        }
        None => {
            if kind_served {
                delete_owned(api, name, owner_uid).await?;
            }
            Ok(None)
        }
    }
}

pub(crate) fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds of k8s-openapi types are static strings already; `Resource::kind` returns a Cow.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// Deletes `name` if it exists and is owned by the cluster with `owner_uid` (never anything
/// a user made).
pub(crate) async fn delete_owned<K>(
    api: &Api<K>,
    name: &str,
    owner_uid: &str,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let kind = kind_of::<K>();
    let Some(current) = api
        .get_opt(name)
        .await
        .map_err(kube_err("get", kind, name))?
    else {
        return Ok(false);
    };
    if !current
        .owner_references()
        .iter()
        .any(|o| o.uid == owner_uid)
    {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: current.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(kube_err("delete", kind, name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_added_fields() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "s", "ports": [{"containerPort": 8080}]}]}}}});
        let current = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600, "template": {"spec": {"containers": [{"name": "s", "ports": [{"containerPort": 8080, "protocol": "TCP"}], "terminationMessagePath": "/dev/termination-log"}]}}}, "status": {}});
        assert!(is_subset(&desired, &current));
    }

    #[test]
    fn subset_detects_drift() {
        let desired = json!({"spec": {"replicas": 2, "list": [1, 2]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 3, "list": [1, 2]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"list": [1, 2]}})));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "list": [1, 2, 3]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "list": [2, 1]}})
        ));
    }

    #[test]
    fn hash_annotation_is_stable_and_tracks_content() {
        let a = with_desired_hash(json!({"metadata": {"name": "x"}, "spec": {"a": 1}}));
        let b = with_desired_hash(json!({"metadata": {"name": "x"}, "spec": {"a": 1}}));
        let c = with_desired_hash(json!({"metadata": {"name": "x"}, "spec": {"a": 2}}));
        let h = |v: &Value| {
            v.pointer("/metadata/annotations").unwrap()[DESIRED_HASH_ANNOTATION].clone()
        };
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
        assert_eq!(h(&a).as_str().unwrap().len(), 64);
        // Existing annotations are kept.
        let d = with_desired_hash(json!({"metadata": {"annotations": {"k": "v"}}}));
        assert_eq!(d.pointer("/metadata/annotations/k"), Some(&json!("v")));
    }

    #[test]
    fn up_to_date_needs_same_hash_and_no_drift() {
        let desired = with_desired_hash(
            json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"r": 1}}),
        );
        let mut current = desired.clone();
        current["metadata"]["resourceVersion"] = json!("7");
        assert!(up_to_date(&desired, &current));
        // Someone changed a field we own: drift.
        let mut drifted = current.clone();
        drifted["spec"]["r"] = json!(3);
        assert!(!up_to_date(&desired, &drifted));
        // We dropped a label since the last apply: the hash differs even though desired ⊆ current.
        let smaller = with_desired_hash(json!({"metadata": {"name": "x"}, "spec": {"r": 1}}));
        assert!(is_subset(
            &json!({"metadata": {"name": "x"}, "spec": {"r": 1}}),
            &current
        ));
        assert!(!up_to_date(&smaller, &current));
        // An object nobody annotated (created by hand) is always re-applied.
        let mut bare = current.clone();
        bare["metadata"]["annotations"] = json!({});
        assert!(!up_to_date(&desired, &bare));
    }

    #[test]
    fn ownership_by_reference_or_by_our_earlier_apply() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            ManagedFieldsEntry, ObjectMeta, OwnerReference,
        };
        let owner = |uid: &str, controller| OwnerReference {
            uid: uid.into(),
            controller: Some(controller),
            ..OwnerReference::default()
        };
        let managed = |m: &str| ManagedFieldsEntry {
            manager: Some(m.into()),
            ..ManagedFieldsEntry::default()
        };
        let meta = |refs: Vec<OwnerReference>, managers: Vec<ManagedFieldsEntry>| ObjectMeta {
            owner_references: Some(refs),
            managed_fields: Some(managers),
            ..ObjectMeta::default()
        };
        assert!(is_ours(&meta(vec![owner("me", true)], vec![]), "me"));
        // Owner reference removed by hand, but we applied it: ours again.
        assert!(is_ours(&meta(vec![], vec![managed(FIELD_MANAGER)]), "me"));
        // A user's object, or another controller's, or a previous cluster's (old uid).
        assert!(!is_ours(&meta(vec![], vec![managed("kubectl")]), "me"));
        assert!(!is_ours(
            &meta(vec![owner("old", true)], vec![managed(FIELD_MANAGER)]),
            "me"
        ));
        assert!(!is_ours(&ObjectMeta::default(), "me"));
    }
}
