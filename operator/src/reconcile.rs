//! One reconciliation of a `SignalingCluster`, as thin I/O around the pure core: fetch the
//! referenced Secrets and create missing generated ones, resolve and render (pure), apply the
//! desired children (`apply`), delete the optional children that were turned off, read back
//! the workloads and apply the status (pure calculator, `conditions`) only when it changed.
//! Watches and retries live in `controller`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::SignalingCluster;
use crate::apply::{apply, apply_or_delete, Applied};
use crate::conditions::{self, DeploymentFacts, Facts, RedisFacts};
use crate::config;
use crate::context::{ApiSupport, Context};
use crate::error::{kube_err, Error};
use crate::names::{self, GeneratedSecret, FIELD_MANAGER};
use crate::resolve::{self, ConfigError, ConfigErrorReason};
use crate::resources::{self, BuildError};

/// Periodic requeue that corrects drift nobody told us about.
pub const DRIFT_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue after a user error (bad reference, bad value): the Secret watch usually triggers
/// sooner.
pub const CONFIG_ERROR_REQUEUE: Duration = Duration::from_secs(120);

fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
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
    for kind in names::generated_secrets_needed(sc) {
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
                ctx.publish(
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

/// Computes the status from `facts` (against the stored one, at the current time), applies
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
    // Server-side apply of the whole status under the operator's field manager: the operator
    // is the only writer of status, so a field or condition it leaves out (endpoint gone,
    // Paused cleared) is removed by the API server, with no null-filling by hand. force: a
    // stale owner of a status field (a hand edit) must not block the operator's view.
    let body = serde_json::json!({
        "apiVersion": SignalingCluster::api_version(&()),
        "kind": SignalingCluster::kind(&()),
        "status": new,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&name, &params, &Patch::Apply(&body))
        .await
        .map_err(kube_err("apply status of", "SignalingCluster", &name))?;
    let old: &[Condition] = sc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    for (type_, reason, message, good) in conditions::transitions(old, &new.conditions) {
        let kind = if good {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(
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
        let redis = names::redis(&name);
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

        let server = names::server(&name);
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
        ctx.publish(
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
        .get_opt(&names::server(&name))
        .await
        .map_err(kube_err("get", "Deployment", &name))?;
    let redis = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&names::redis(&name))
        .await
        .map_err(kube_err("get", "StatefulSet", &name))?;
    let facts = facts(sc, false, Some(error), deployment.as_ref(), redis.as_ref());
    update_status(ctx, sc, clusters, &facts).await?;
    Ok(Action::requeue(CONFIG_ERROR_REQUEUE))
}

#[cfg(test)]
mod fake_api_tests;
