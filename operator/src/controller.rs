//! The controller around `reconcile`: which objects are watched and how they map back to a
//! `SignalingCluster`, the error policy (per-object exponential backoff, see `backoff`), API
//! discovery and the CRD check at startup, and the leader-election loop that runs the
//! controller only while leading. The reconcile steps themselves live in `reconcile`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::api::SignalingCluster;
use crate::backoff::Backoff;
use crate::context::{ApiSupport, Context};
use crate::error::Error;
use crate::leader::{LeaderElector, LeaseSettings};
use crate::metrics::Metrics;
use crate::names::FIELD_MANAGER;
use crate::reconcile;
use crate::resolve::referenced_secret_names;

/// Full name of the CRD, for the startup check.
pub const CRD_NAME: &str = "signalingclusters.switchboard.dev";
/// Label every child carries; owned-object watches select on it so they do not cache every
/// Deployment/Service in the cluster.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=switchboard-operator";

/// Whether the CRD is installed.
#[derive(Debug, PartialEq, Eq)]
pub enum CrdState {
    Installed,
    Missing,
}

/// Checks that the CRD exists: by name on the CRD API, or, when RBAC forbids that, by listing
/// SignalingClusters (404 means the resource type is unknown to the server).
pub async fn crd_state(client: &Client, namespace: Option<&str>) -> Result<CrdState, kube::Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD_NAME).await {
        Ok(Some(_)) => return Ok(CrdState::Installed),
        Ok(None) => return Ok(CrdState::Missing),
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        Err(e) => return Err(e),
    }
    let clusters: Api<SignalingCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match clusters
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(CrdState::Installed),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(CrdState::Missing),
        Err(e) => Err(e),
    }
}

/// What `run_operator` needs beyond the client.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    /// Leader election; `None` runs the controller unconditionally.
    pub lease: Option<LeaseSettings>,
}

async fn api_support(client: &Client) -> ApiSupport {
    async fn has(client: &Client, group_version: &str, plural: &str) -> bool {
        match client.list_api_group_resources(group_version).await {
            Ok(list) => list.resources.iter().any(|r| r.name == plural),
            Err(_) => false,
        }
    }
    ApiSupport {
        hpa_v2: has(client, "autoscaling/v2", "horizontalpodautoscalers").await,
        pdb_v1: has(client, "policy/v1", "poddisruptionbudgets").await,
    }
}

/// Clusters in `secret`'s namespace that own it or reference it by name.
fn clusters_for_secret(
    store: &Store<SignalingCluster>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<SignalingCluster>> {
    let Some(ns) = secret.metadata.namespace.as_deref() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let owners: Vec<&str> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "SignalingCluster" && o.api_version.starts_with("switchboard.dev/"))
        .map(|o| o.name.as_str())
        .collect();
    store
        .state()
        .iter()
        .filter(|sc| sc.namespace().as_deref() == Some(ns))
        .filter(|sc| {
            owners.contains(&sc.name_any().as_str()) || referenced_secret_names(sc).contains(&name)
        })
        .map(|sc| ObjectRef::from_obj(sc.as_ref()))
        .collect()
}

fn namespaced_or_all<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `stop` resolves.
pub async fn run_controller(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    identity: Option<String>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let support = api_support(&client).await;
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        hpa_v2 = support.hpa_v2,
        pdb_v1 = support.pdb_v1,
        "starting controller"
    );
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let mut controller = Controller::new(
        namespaced_or_all::<SignalingCluster>(&client, ns),
        watcher::Config::default(),
    )
    .owns(namespaced_or_all::<Deployment>(&client, ns), owned.clone())
    .owns(namespaced_or_all::<StatefulSet>(&client, ns), owned.clone())
    .owns(namespaced_or_all::<Service>(&client, ns), owned.clone())
    .owns(namespaced_or_all::<Ingress>(&client, ns), owned.clone())
    .owns(
        namespaced_or_all::<NetworkPolicy>(&client, ns),
        owned.clone(),
    );
    if support.hpa_v2 {
        controller = controller.owns(
            namespaced_or_all::<HorizontalPodAutoscaler>(&client, ns),
            owned.clone(),
        );
    }
    if support.pdb_v1 {
        controller = controller.owns(
            namespaced_or_all::<PodDisruptionBudget>(&client, ns),
            owned.clone(),
        );
    }
    // Secrets: one metadata-only watch (values never enter the cache) for both the Secrets we
    // own and the user's Secrets a cluster references. No predicate: Secrets have no
    // generation, and a generation filter would drop every rotation.
    let store = controller.store();
    // `Api<PartialObjectMeta<_>>` makes metadata-only list/watch requests.
    let secrets = watcher(
        namespaced_or_all::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default(),
    )
    .touched_objects();
    let mapper_store = store.clone();
    controller = controller.watches_stream(secrets, move |secret| {
        clusters_for_secret(&mapper_store, &secret)
    });

    metrics.set_store(Some(store));
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: identity,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        reporter,
        metrics: metrics.clone(),
        backoff: Backoff::default(),
        support,
    });
    let backoff_ctx = ctx.clone();
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile_measured, error_policy, ctx)
        .for_each(|res| {
            use kube::runtime::controller::Error as CtrlError;
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                // Counted and logged by reconcile_measured / error_policy.
                Err(CtrlError::ReconcilerFailed(..)) => {}
                // A cluster deleted while a retry was queued: expected.
                Err(CtrlError::ObjectNotFound(obj)) => {
                    backoff_ctx
                        .backoff
                        .forget(&obj.name, obj.namespace.as_deref());
                    tracing::debug!(object = %obj, "queued object is gone")
                }
                Err(CtrlError::QueueError(e)) => {
                    // Watch errors (RBAC, API restarts): the watcher retries with backoff.
                    metrics.observe_failure("watch");
                    tracing::warn!(error = %e, "watch error");
                }
                Err(e) => {
                    metrics.observe_failure("controller");
                    tracing::warn!(error = %e, "controller error");
                }
            }
            futures::future::ready(())
        })
        .await;
    metrics.set_store(None);
    tracing::info!("controller stopped");
}

async fn reconcile_measured(sc: Arc<SignalingCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Every log line of this reconcile carries the cluster (a span, not an entered guard:
    // the future moves between threads across awaits).
    let span = tracing::info_span!(
        "reconcile",
        cluster = %sc.name_any(),
        namespace = sc.namespace().as_deref().unwrap_or("")
    );
    let result = tracing::Instrument::instrument(reconcile::reconcile(&sc, &ctx), span).await;
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    if result.is_ok() {
        ctx.backoff.reset(&ObjectRef::from_obj(sc.as_ref()));
    }
    result
}

pub(crate) fn error_policy(sc: Arc<SignalingCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let (failures, delay) = ctx
        .backoff
        .record_failure(&ObjectRef::from_obj(sc.as_ref()));
    if failures == 1 {
        // One Warning per outage, when the backoff starts (not on every retry; a success
        // resets the count). error_policy is synchronous: publish from a task.
        let note = error.event_note();
        let (sc, ctx) = (sc.clone(), ctx.clone());
        tokio::spawn(async move {
            ctx.publish(
                &sc,
                EventType::Warning,
                "ReconcileFailed",
                note,
                "Reconcile",
            )
            .await;
        });
    }
    tracing::warn!(
        cluster = %sc.name_any(),
        namespace = sc.namespace().as_deref().unwrap_or(""),
        error = %error,
        retry_in_secs = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Resolves once `rx` reads true (or its sender is gone).
fn flag_set(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    // Spawned so the returned future is a JoinHandle (Sync), as graceful_shutdown_on requires.
    let handle = tokio::spawn(async move {
        let _ = rx.wait_for(|v| *v).await;
    });
    async move {
        let _ = handle.await;
    }
}

/// Resolves once `rx` reads false (or its sender is gone).
fn flag_cleared(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    let handle = tokio::spawn(async move {
        let _ = rx.wait_for(|v| !*v).await;
    });
    async move {
        let _ = handle.await;
    }
}

/// Runs the operator until `stop` turns true: with a Lease, the controller runs only while
/// this process leads (and stops as soon as leadership is lost); the Lease is released only
/// after the controller stopped.
pub async fn run_operator(
    client: Client,
    settings: OperatorSettings,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let Some(lease) = settings.lease else {
        metrics.set_leader(true);
        run_controller(
            client,
            settings.namespace,
            metrics.clone(),
            None,
            flag_set(stop),
        )
        .await;
        metrics.set_leader(false);
        return;
    };
    let identity = lease.identity.clone();
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let elector = tokio::spawn(
        LeaderElector::new(client.clone(), lease).run(leading_tx, flag_set(release_rx)),
    );
    loop {
        let mut stop_rx = stop.clone();
        tokio::select! {
            r = leading_rx.wait_for(|l| *l) => if r.is_err() { break },
            _ = stop_rx.wait_for(|s| *s) => break,
        }
        metrics.set_leader(true);
        let lost = flag_cleared(leading_rx.clone());
        let stopped = flag_set(stop.clone());
        let until = async move {
            tokio::select! {
                _ = lost => {},
                _ = stopped => {},
            }
        };
        run_controller(
            client.clone(),
            settings.namespace.clone(),
            metrics.clone(),
            Some(identity.clone()),
            until,
        )
        .await;
        metrics.set_leader(false);
        if *stop.borrow() {
            break;
        }
        tracing::warn!("leadership lost; controller stopped, campaigning again");
    }
    let _ = release_tx.send(true);
    let _ = elector.await;
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::fake_api::FakeApi;

    fn cluster(ns: &str, name: &str, spec: serde_json::Value) -> SignalingCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": spec
        }))
        .unwrap()
    }

    fn secret_meta(ns: &str, name: &str, owner: Option<&str>) -> PartialObjectMeta<Secret> {
        let mut meta = PartialObjectMeta::<Secret>::default();
        meta.metadata.name = Some(name.to_owned());
        meta.metadata.namespace = Some(ns.to_owned());
        meta.metadata.owner_references = owner.map(|o| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "switchboard.dev/v1alpha1".into(),
                    kind: "SignalingCluster".into(),
                    name: o.into(),
                    uid: format!("uid-{o}"),
                    controller: Some(true),
                    ..Default::default()
                },
            ]
        });
        meta
    }

    #[test]
    fn secrets_map_to_the_clusters_that_reference_or_own_them() {
        use kube::runtime::reflector;
        let (store, mut writer) = reflector::store::<SignalingCluster>();
        for sc in [
            cluster(
                "a",
                "one",
                serde_json::json!({"ice": {"turnUrls": ["turn:t:3478"], "turnSecretRef": {"name": "shared-turn"}}}),
            ),
            cluster(
                "a",
                "two",
                serde_json::json!({"ice": {"turnUrls": ["turn:t:3478"], "turnSecretRef": {"name": "shared-turn"}}}),
            ),
            cluster(
                "b",
                "one",
                serde_json::json!({"ice": {"turnUrls": ["turn:t:3478"], "turnSecretRef": {"name": "shared-turn"}}}),
            ),
            cluster("a", "three", serde_json::json!({})),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(sc));
        }
        let names = |refs: Vec<ObjectRef<SignalingCluster>>| {
            let mut v: Vec<String> = refs
                .iter()
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
                .collect();
            v.sort();
            v
        };
        // A user Secret referenced by two clusters in its namespace (not the one in "b").
        assert_eq!(
            names(clusters_for_secret(
                &store,
                &secret_meta("a", "shared-turn", None)
            )),
            vec!["a/one", "a/two"]
        );
        // A generated Secret maps to its cluster by name and by owner reference.
        assert_eq!(
            names(clusters_for_secret(
                &store,
                &secret_meta("a", "three-jwt", Some("three"))
            )),
            vec!["a/three"]
        );
        // Owned but under an unexpected name (e.g. the config Secret): the owner reference.
        assert_eq!(
            names(clusters_for_secret(
                &store,
                &secret_meta("a", "three-config", Some("three"))
            )),
            vec!["a/three"]
        );
        // Unrelated Secrets trigger nothing.
        assert!(clusters_for_secret(&store, &secret_meta("a", "other", None)).is_empty());
        assert!(clusters_for_secret(&store, &secret_meta("c", "shared-turn", None)).is_empty());
    }

    /// error_policy against the in-memory API server: one Warning per outage, not per retry.
    #[tokio::test]
    async fn a_transient_failure_emits_one_reconcile_failed_event_per_outage() {
        let fake = FakeApi::default();
        let ctx = Arc::new(fake.context());
        let sc = Arc::new(fake.cluster(json!({})));
        fake.fault(Method::PATCH, "/deployments/sc-server", 500, 3);
        for _ in 0..3 {
            let err = reconcile::reconcile(&sc, &ctx).await.unwrap_err();
            error_policy(sc.clone(), &err, ctx.clone());
        }
        let notes = fake.wait_for_events("ReconcileFailed", 1).await;
        // Let any (wrong) further event tasks run before counting.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            fake.event_notes("ReconcileFailed"),
            vec!["reconcile failed: server_error (apply Deployment sc-server); retrying with backoff (the operator's log has the details)".to_owned()],
            "{notes:#?}"
        );
        assert!(fake
            .events()
            .iter()
            .filter(|e| e["reason"] == "ReconcileFailed")
            .all(|e| e["type"] == "Warning"));

        // A success ends the outage; the next failure starts a new one: a second event.
        reconcile::reconcile(&sc, &ctx).await.unwrap();
        ctx.backoff
            .reset(&kube::runtime::reflector::ObjectRef::from_obj(sc.as_ref()));
        fake.fault(Method::PATCH, "/deployments/sc-server", 500, 1);
        let sc = Arc::new(fake.edit_spec(json!({"replicas": 4})));
        let err = reconcile::reconcile(&sc, &ctx).await.unwrap_err();
        error_policy(sc.clone(), &err, ctx.clone());
        assert_eq!(fake.wait_for_events("ReconcileFailed", 2).await.len(), 2);
    }
}
