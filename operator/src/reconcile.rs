//! One reconciliation of a `SignalingCluster`, as thin I/O around the pure core: fetch the
//! referenced Secrets and create missing generated ones, resolve and render (pure), apply the
//! desired children with server-side apply (skipping objects already up to date), delete the
//! optional children that were turned off, read back the workloads and patch the status
//! (pure calculator) only when it changed. Watches and retries live in `controller`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::SignalingCluster;
use crate::conditions::{self, DeploymentFacts, Facts, RedisFacts};
use crate::config::{self, sha256_hex};
use crate::controller::{ApiSupport, Backoff};
use crate::metrics::Metrics;
use crate::resolve::{self, ConfigError, ConfigErrorReason};
use crate::resources::{self, BuildError, GeneratedSecret, FIELD_MANAGER};

/// Annotation on each child's own metadata (never on the pod template): sha256 of the object
/// the operator last applied. Lets a reconcile skip an apply when nothing changed, while still
/// re-applying when the operator removed a field (which a "desired ⊆ current" check alone
/// would miss).
pub const DESIRED_HASH_ANNOTATION: &str = "switchboard.dev/desired-hash";
/// Periodic requeue that corrects drift nobody told us about.
pub const DRIFT_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue after a user error (bad reference, bad value): the Secret watch usually triggers
/// sooner.
pub const CONFIG_ERROR_REQUEUE: Duration = Duration::from_secs(120);

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    /// Who publishes events. Each event gets a fresh `Recorder` (see `publish`).
    pub reporter: Reporter,
    pub metrics: std::sync::Arc<Metrics>,
    pub backoff: Backoff,
    pub support: ApiSupport,
}

/// What can make a reconcile fail (user errors are not here: they become `ConfigValid=False`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("building children: {0}")]
    Build(#[from] BuildError),
    #[error(transparent)]
    Render(#[from] config::RenderError),
    #[error("the random number generator failed: {0}")]
    Random(String),
    #[error("SignalingCluster has no namespace")]
    NoNamespace,
    /// A child's name is taken by an object this cluster does not own (a user's, or a
    /// previous cluster's awaiting garbage collection): never taken over.
    #[error("{kind} {name} already exists and is not owned by this SignalingCluster")]
    NotOwned { kind: &'static str, name: String },
}

impl Error {
    /// A bounded label for the failure metric (never a name or a message).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(s) if s.code >= 500 => "server_error",
                kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Self::Serialize { .. } => "serialize",
            Self::Build(_) => "build",
            Self::Render(_) => "render",
            Self::Random(_) => "random",
            Self::NoNamespace => "no_namespace",
            Self::NotOwned { .. } => "not_owned",
        }
    }
}

impl Error {
    /// The note of the Warning event when a transient failure starts the backoff: the
    /// bounded label and the object, never an API server's message (the logs have it).
    pub fn event_note(&self) -> String {
        let object = match self {
            Self::Kube {
                verb, kind, name, ..
            } => format!(" ({verb} {kind} {name})"),
            Self::Serialize { kind, name, .. } => format!(" (serializing {kind} {name})"),
            _ => String::new(),
        };
        format!(
            "reconcile failed: {}{object}; retrying with backoff (the operator's log has the details)",
            self.metric_label()
        )
    }
}

fn kube_err(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_owned();
    move |source| Error::Kube {
        verb,
        kind,
        name,
        source,
    }
}

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
async fn apply<K>(api: &Api<K>, desired: &K, owner_uid: &str) -> Result<(K, Applied), Error>
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
async fn apply_or_delete<K>(
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

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds of k8s-openapi types are static strings already; `Resource::kind` returns a Cow.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// Deletes `name` if it exists and is owned by the cluster with `owner_uid` (never anything
/// a user made).
async fn delete_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool, Error>
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

fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
}

pub(crate) async fn publish(
    ctx: &Context,
    sc: &SignalingCluster,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    // A fresh Recorder per event: a long-lived one folds events into a series keyed without
    // the note (for minutes), so a later transition would show the first transition's note.
    // Events are emitted only on transitions, so there is nothing worth folding.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    // Events are best effort: a failed event must not fail (and so repeat) the reconcile.
    if let Err(e) = recorder.publish(&event, &sc.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

/// Fetches or generates the Secrets a cluster reads, keyed by name. Generated Secrets are
/// created once and never updated (a 409 means another writer won the race: use theirs).
async fn fetch_secrets(
    ctx: &Context,
    sc: &SignalingCluster,
    api: &Api<Secret>,
) -> Result<BTreeMap<String, Secret>, Error> {
    let cluster = sc.name_any();
    let mut fetched = BTreeMap::new();
    for kind in resources::generated_secrets_needed(sc) {
        let name = kind.secret_name(&cluster);
        if let Some(s) = api
            .get_opt(&name)
            .await
            .map_err(kube_err("get", "Secret", &name))?
        {
            fetched.insert(name, s);
            continue;
        }
        let desired = resources::desired_generated_secret(
            sc,
            kind,
            &random_bytes(GeneratedSecret::RANDOM_BYTES)?,
        )?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let created = match api.create(&params, &desired).await {
            Ok(s) => {
                tracing::info!(cluster = %cluster, secret = %name, "generated secret");
                publish(
                    ctx,
                    sc,
                    EventType::Normal,
                    "SecretGenerated",
                    format!("generated Secret {name}"),
                    "Generate",
                )
                .await;
                s
            }
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .get(&name)
                .await
                .map_err(kube_err("get", "Secret", &name))?,
            Err(e) => return Err(kube_err("create", "Secret", &name)(e)),
        };
        fetched.insert(name, created);
    }
    for name in resolve::referenced_secret_names(sc) {
        if fetched.contains_key(&name) {
            continue;
        }
        if let Some(s) = api
            .get_opt(&name)
            .await
            .map_err(kube_err("get", "Secret", &name))?
        {
            fetched.insert(name, s);
        }
    }
    Ok(fetched)
}

/// What the status calculator needs, from the cluster and the workloads read back.
fn facts(
    sc: &SignalingCluster,
    paused: bool,
    config_error: Option<ConfigError>,
    deployment: Option<&Deployment>,
    redis: Option<&StatefulSet>,
) -> Facts {
    Facts {
        name: sc.name_any(),
        namespace: sc.namespace().unwrap_or_default(),
        generation: sc.metadata.generation,
        paused,
        config_error,
        redis: if sc.spec.redis.managed.is_some() {
            RedisFacts::from_statefulset(redis)
        } else {
            RedisFacts::External
        },
        servers: deployment.map(DeploymentFacts::from_deployment),
        endpoint: resources::endpoint(sc).ok(),
    }
}

/// An optional part the API server cannot serve (autoscaling/v2 needs Kubernetes 1.23+,
/// policy/v1 1.21+) is a user error to report, not a transient failure to retry forever.
pub fn unsupported_api(children: &resources::Children, support: ApiSupport) -> Option<ConfigError> {
    let missing = |field: &str, api: &str, since: &str| {
        ConfigError {
        reason: ConfigErrorReason::ApiUnavailable,
        message: format!(
            "{field} is enabled but this API server does not serve {api} (Kubernetes {since}+); disable it or upgrade the cluster"
        ),
    }
    };
    if children.hpa.is_some() && !support.hpa_v2 {
        return Some(missing("spec.autoscaling", "autoscaling/v2", "1.23"));
    }
    if children.pdb.is_some() && !support.pdb_v1 {
        return Some(missing("spec.podDisruptionBudget", "policy/v1", "1.21"));
    }
    None
}

/// Kubernetes `Time` now.
fn now() -> Time {
    Time(Timestamp::now())
}

/// Computes the status from `facts` (against the stored one, at the current time), patches
/// it if it differs, then publishes an Event for every condition whose status flipped (and
/// only then). Every reconcile path ends here, so the status is derived in one place.
async fn update_status(
    ctx: &Context,
    sc: &SignalingCluster,
    api: &Api<SignalingCluster>,
    facts: &Facts,
) -> Result<(), Error> {
    let new = conditions::compute_status(sc.status.as_ref(), facts, &now());
    let name = sc.name_any();
    if sc.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let mut status = serde_json::to_value(&new).map_err(|source| Error::Serialize {
        kind: "SignalingCluster",
        name: name.clone(),
        source,
    })?;
    // A merge patch leaves keys it does not mention: spell out cleared fields as null.
    if let Some(map) = status.as_object_mut() {
        for key in [
            "observedGeneration",
            "replicas",
            "readyReplicas",
            "endpoint",
            "conditions",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    // Under the operator's field manager, so managedFields name it (not the client's agent).
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(
        &name,
        &params,
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(kube_err("patch status of", "SignalingCluster", &name))?;
    let old: &[Condition] = sc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    for (type_, reason, message, good) in transitions(old, &new.conditions) {
        let kind = if good {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            ctx,
            sc,
            kind,
            &reason,
            format!("{type_}: {message}"),
            "Reconcile",
        )
        .await;
    }
    Ok(())
}

/// Conditions whose status is new or changed: (type, reason, message, is-good). For `Paused`
/// "True" is reported as a plain Normal event too. A `ConfigValid` that stays False but names
/// another problem (reason or message changed, e.g. a second missing Secret) is a new user
/// error and is reported as well; other conditions' messages (replica counts) change while
/// False without being news.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<(String, String, String, bool)> {
    new.iter()
        .filter(|n| {
            old.iter().find(|o| o.type_ == n.type_).is_none_or(|o| {
                o.status != n.status
                    || (n.type_ == "ConfigValid"
                        && n.status == "False"
                        && (o.reason != n.reason || o.message != n.message))
            })
        })
        .map(|n| {
            let good = n.status == "True" || n.type_ == "Paused";
            (n.type_.clone(), n.reason.clone(), n.message.clone(), good)
        })
        .collect()
}

/// One reconciliation. User errors return `Ok` (they are reported in the status); only
/// transient failures return `Err` and get backoff.
pub async fn reconcile(sc: &SignalingCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = sc.namespace().ok_or(Error::NoNamespace)?;
    let name = sc.name_any();
    let clusters: Api<SignalingCluster> = Api::namespaced(ctx.client.clone(), &ns);

    if sc.spec.paused {
        let facts = facts(sc, true, None, None, None);
        update_status(ctx, sc, &clusters, &facts).await?;
        // Unpausing is a spec change, which triggers the next reconcile.
        return Ok(Action::await_change());
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let fetched = fetch_secrets(ctx, sc, &secrets).await?;
    let resolved = match resolve::resolve(sc, &fetched) {
        Ok(r) => r,
        Err(config_error) => return config_invalid(ctx, sc, &clusters, config_error).await,
    };
    let rendered = config::render(sc, &resolved)?;
    let children = resources::desired_children(sc, &rendered)?;
    if let Some(error) = unsupported_api(&children, ctx.support) {
        return config_invalid(ctx, sc, &clusters, error).await;
    }
    let uid = sc.uid().ok_or(BuildError::MissingMetadata("uid"))?;
    let client = &ctx.client;

    // `?` inside leaves this block only, so a name conflict can become a condition below.
    let applied = async {
        let mut changed: Vec<String> = Vec::new();
        let mut note = |kind: &str, name: String, a: Applied| {
            if a != Applied::Unchanged {
                changed.push(format!(
                    "{} {kind} {name}",
                    if a == Applied::Created {
                        "created"
                    } else {
                        "updated"
                    }
                ));
            }
        };

        let (_, a) = apply(&secrets, &children.config_secret, &uid).await?;
        note("Secret", children.config_secret.name_any(), a);

        let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
        let np_api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let redis = resources::names::redis(&name);
        let redis_sts = apply_or_delete(
            &sts_api,
            children.redis_statefulset.as_ref(),
            &redis,
            &uid,
            true,
            &mut note,
        )
        .await?;
        let redis_svc = children.redis_service.as_ref();
        apply_or_delete(&svc_api, redis_svc, &redis, &uid, true, &mut note).await?;
        let np = children.network_policy.as_ref();
        apply_or_delete(&np_api, np, &redis, &uid, true, &mut note).await?;

        let deploy_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let (deployment, a) = apply(&deploy_api, &children.deployment, &uid).await?;
        note("Deployment", children.deployment.name_any(), a);
        let (_, a) = apply(&svc_api, &children.service, &uid).await?;
        note("Service", children.service.name_any(), a);

        let server = resources::names::server(&name);
        let ing_api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        let ingress = children.ingress.as_ref();
        apply_or_delete(&ing_api, ingress, &server, &uid, true, &mut note).await?;
        // Without autoscaling/v2 (policy/v1) nothing of that kind can exist to delete.
        let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let (hpa, hpa_v2) = (children.hpa.as_ref(), ctx.support.hpa_v2);
        apply_or_delete(&hpa_api, hpa, &server, &uid, hpa_v2, &mut note).await?;
        let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        let (pdb, pdb_v1) = (children.pdb.as_ref(), ctx.support.pdb_v1);
        apply_or_delete(&pdb_api, pdb, &server, &uid, pdb_v1, &mut note).await?;
        Ok::<_, Error>((deployment, redis_sts, changed))
    }
    .await;
    let (deployment, redis_sts, changed) = match applied {
        Ok(v) => v,
        Err(Error::NotOwned { kind, name }) => {
            let error = ConfigError {
                reason: ConfigErrorReason::ObjectNotOwned,
                message: format!(
                    "{kind} {name} already exists and is not owned by this SignalingCluster; delete or rename it (the operator never takes over objects it did not create)"
                ),
            };
            return config_invalid(ctx, sc, &clusters, error).await;
        }
        Err(e) => return Err(e),
    };

    if !changed.is_empty() {
        tracing::info!(changes = %changed.join(", "), "applied");
        publish(
            ctx,
            sc,
            EventType::Normal,
            "Applied",
            changed.join(", "),
            "Apply",
        )
        .await;
    }

    let facts = facts(sc, false, None, Some(&deployment), redis_sts.as_ref());
    update_status(ctx, sc, &clusters, &facts).await?;
    Ok(Action::requeue(DRIFT_REQUEUE))
}

/// A user error: report it in the status (and an Event on the transition), leave every
/// running object as it is, retry slowly.
async fn config_invalid(
    ctx: &Context,
    sc: &SignalingCluster,
    clusters: &Api<SignalingCluster>,
    error: ConfigError,
) -> Result<Action, Error> {
    tracing::info!(reason = error.reason.as_str(), message = %error.message, "configuration invalid");
    // Read (never write) what runs, so the other conditions stay truthful.
    let ns = sc.namespace().unwrap_or_default();
    let name = sc.name_any();
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&resources::names::server(&name))
        .await
        .map_err(kube_err("get", "Deployment", &name))?;
    let redis = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&resources::names::redis(&name))
        .await
        .map_err(kube_err("get", "StatefulSet", &name))?;
    let facts = facts(sc, false, Some(error), deployment.as_ref(), redis.as_ref());
    update_status(ctx, sc, clusters, &facts).await?;
    Ok(Action::requeue(CONFIG_ERROR_REQUEUE))
}

#[cfg(test)]
mod fake_api_tests;

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

    fn cond(t: &str, s: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: format!("R{t}{s}"),
            message: format!("m {t}"),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn transitions_only_for_flips() {
        let old = vec![cond("Ready", "False"), cond("ConfigValid", "True")];
        let new = vec![
            cond("Ready", "True"),
            cond("ConfigValid", "True"),
            cond("ServersReady", "False"),
        ];
        let t = transitions(&old, &new);
        assert_eq!(
            t,
            vec![
                ("Ready".into(), "RReadyTrue".into(), "m Ready".into(), true),
                (
                    "ServersReady".into(),
                    "RServersReadyFalse".into(),
                    "m ServersReady".into(),
                    false
                ),
            ]
        );
        assert!(transitions(&new, &new).is_empty());
    }

    #[test]
    fn every_metric_label_is_registered_up_front() {
        let api = |code: u16| Error::Kube {
            verb: "get",
            kind: "Secret",
            name: "x".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            ),
        };
        let json_error = serde_json::from_str::<u32>("x").unwrap_err();
        let yaml_error = serde_yaml::from_str::<u32>("x").unwrap_err();
        let errors = vec![
            api(409),
            api(403),
            api(404),
            api(422),
            api(500),
            api(400),
            Error::Kube {
                verb: "get",
                kind: "Secret",
                name: "x".into(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Serialize {
                kind: "Secret",
                name: "x".into(),
                source: json_error,
            },
            Error::Build(BuildError::MissingMetadata("uid")),
            Error::Render(config::RenderError::from(yaml_error)),
            Error::Random("x".into()),
            Error::NoNamespace,
            Error::NotOwned {
                kind: "Deployment",
                name: "x".into(),
            },
        ];
        let labels: std::collections::BTreeSet<&str> =
            errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), errors.len(), "two errors share a label");
        for label in labels {
            assert!(
                crate::metrics::FAILURE_LABELS.contains(&label),
                "{label} is not pre-registered"
            );
        }
    }

    #[test]
    fn a_new_config_error_while_config_valid_stays_false_is_a_transition() {
        let error = |reason: &str, message: &str| Condition {
            reason: reason.into(),
            message: message.into(),
            ..cond("ConfigValid", "False")
        };
        let old = vec![
            error("SecretNotFound", "Secret a not found"),
            cond("ServersReady", "False"),
        ];
        // Another reason, or the same reason naming another Secret: reported.
        let new = vec![
            error("SecretKeyMissing", "key x missing"),
            cond("ServersReady", "False"),
        ];
        assert_eq!(
            transitions(&old, &new),
            vec![(
                "ConfigValid".into(),
                "SecretKeyMissing".into(),
                "key x missing".into(),
                false
            )]
        );
        let new = vec![error("SecretNotFound", "Secret b not found")];
        assert_eq!(transitions(&old, &new).len(), 1);
        // Unchanged error, or another condition's message changing while False: nothing.
        assert!(transitions(&old, &old).is_empty());
        let mut servers = cond("ServersReady", "False");
        servers.message = "1/2 ready".into();
        assert!(transitions(&old, &[old[0].clone(), servers]).is_empty());
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

    #[test]
    fn error_labels_are_bounded() {
        let e = Error::NoNamespace;
        assert_eq!(e.metric_label(), "no_namespace");
        let api = |code| Error::Kube {
            verb: "apply",
            kind: "Deployment",
            name: "x".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            ),
        };
        assert_eq!(api(409).metric_label(), "conflict");
        assert_eq!(api(403).metric_label(), "forbidden");
        assert_eq!(api(503).metric_label(), "server_error");
        assert_eq!(api(400).metric_label(), "api_error");
    }
}
