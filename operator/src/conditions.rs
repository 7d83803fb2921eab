//! Pure status calculator: observed facts (config error, Redis and Deployment state, paused) in,
//! `SignalingClusterStatus` with actionable conditions out. It reads no API and no clock: the
//! caller passes `now`, and `lastTransitionTime` only moves when a condition's status flips, so
//! an unchanged cluster yields an identical status (and the runtime writes nothing).
//! [`transitions`] tells which conditions changed between two statuses (what gets an Event).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::SignalingClusterStatus;
use crate::names;
use crate::resolve::ConfigError;

/// Condition types, in the order they appear in the status.
pub mod types {
    /// Everything below is True.
    pub const READY: &str = "Ready";
    /// Secrets resolved and the server config rendered.
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// The managed Redis is ready (always True for an external Redis).
    pub const REDIS_READY: &str = "RedisReady";
    /// Every desired server pod is ready.
    pub const SERVERS_READY: &str = "ServersReady";
    /// Present only while `spec.paused` is true.
    pub const PAUSED: &str = "Paused";
}

/// What the runtime observed for one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    /// Cluster name (used in the kubectl hints of messages).
    pub name: String,
    /// Cluster namespace.
    pub namespace: String,
    /// `metadata.generation` of the cluster.
    pub generation: Option<i64>,
    /// `spec.paused`.
    pub paused: bool,
    /// Why the config could not be resolved or rendered, if it could not.
    pub config_error: Option<ConfigError>,
    /// State of the Redis.
    pub redis: RedisFacts,
    /// State of the server Deployment; `None` when it does not exist.
    pub servers: Option<DeploymentFacts>,
    /// `status.endpoint` to report.
    pub endpoint: Option<String>,
}

/// State of the cluster's Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisFacts {
    /// An external Redis: the operator cannot see it; servers' readiness covers it.
    External,
    /// The managed StatefulSet does not exist.
    ManagedMissing,
    /// The managed StatefulSet exists with this many ready pods.
    Managed { ready_replicas: i32 },
}

impl RedisFacts {
    /// Facts from the managed StatefulSet as read from the API (`None`: not found).
    pub fn from_statefulset(sts: Option<&StatefulSet>) -> Self {
        match sts {
            None => Self::ManagedMissing,
            Some(s) => Self::Managed {
                ready_replicas: s
                    .status
                    .as_ref()
                    .and_then(|st| st.ready_replicas)
                    .unwrap_or(0),
            },
        }
    }
}

/// The parts of a Deployment's status the conditions need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentFacts {
    /// `spec.replicas` (what the Deployment, or its HPA, wants).
    pub desired: i32,
    /// `status.replicas`: pods that exist.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `status.updatedReplicas`: pods of the current template.
    pub updated: i32,
    /// `status.observedGeneration >= metadata.generation`: the controller saw the last change.
    pub observed_current: bool,
    /// A failure the Deployment reports: (reason, message) of `ReplicaFailure=True` or
    /// `Progressing=False`.
    pub failure: Option<(String, String)>,
}

impl DeploymentFacts {
    /// Facts from a Deployment as read from the API.
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let observed_current = match (status.observed_generation, d.metadata.generation) {
            (Some(seen), Some(generation)) => seen >= generation,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        let failure = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| {
                let failed = (c.type_ == "ReplicaFailure" && c.status == "True")
                    || (c.type_ == "Progressing" && c.status == "False");
                failed.then(|| {
                    (
                        c.reason.unwrap_or_else(|| c.type_.clone()),
                        c.message.unwrap_or_default(),
                    )
                })
            });
        Self {
            desired,
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed_current,
            failure,
        }
    }
}

/// The status for `facts`, keeping each condition's `lastTransitionTime` from `previous`
/// unless its status changed. While paused, the other conditions are carried over unchanged.
pub fn compute_status(
    previous: Option<&SignalingClusterStatus>,
    facts: &Facts,
    now: &Time,
) -> SignalingClusterStatus {
    let prev_conditions: &[Condition] = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(
            prev_conditions,
            type_,
            ok,
            reason,
            message,
            facts.generation,
            now,
        )
    };

    if facts.paused {
        let mut status = previous.cloned().unwrap_or_default();
        // The pause itself is the change we observed (setting it bumps the generation).
        status.observed_generation = facts.generation;
        status.conditions.retain(|c| c.type_ != types::PAUSED);
        status.conditions.push(cond(
            types::PAUSED,
            true,
            "Paused",
            "spec.paused is true: the operator leaves every child as it is; set spec.paused to false to resume".to_owned(),
        ));
        return status;
    }

    // Server pods only: the instance label alone would also list the Redis pod.
    let selector = format!(
        "-n {} -l app.kubernetes.io/instance={},app.kubernetes.io/component=server",
        facts.namespace, facts.name
    );

    let config_valid = match &facts.config_error {
        Some(e) => cond(
            types::CONFIG_VALID,
            false,
            e.reason.as_str(),
            format!(
                "{}; running children are left untouched until this is fixed",
                e.message
            ),
        ),
        None => cond(
            types::CONFIG_VALID,
            true,
            "Resolved",
            "referenced Secrets resolved and the server config rendered".to_owned(),
        ),
    };

    let redis_ready = match &facts.redis {
        RedisFacts::External => cond(
            types::REDIS_READY,
            true,
            "External",
            "external Redis: the servers' readiness probes check it".to_owned(),
        ),
        RedisFacts::ManagedMissing => cond(
            types::REDIS_READY,
            false,
            "StatefulSetMissing",
            format!(
                "StatefulSet {} does not exist yet",
                names::redis(&facts.name)
            ),
        ),
        RedisFacts::Managed { ready_replicas } if *ready_replicas > 0 => cond(
            types::REDIS_READY,
            true,
            "RedisReady",
            format!(
                "managed Redis pod {} is ready",
                names::redis_pod(&facts.name)
            ),
        ),
        RedisFacts::Managed { .. } => cond(
            types::REDIS_READY,
            false,
            "RedisNotReady",
            format!(
                "managed Redis pod {pod} is not ready; see kubectl describe pod {pod} -n {}",
                facts.namespace,
                pod = names::redis_pod(&facts.name)
            ),
        ),
    };

    let servers_ready = servers_condition(facts, &selector, &cond);

    let ready = [&config_valid, &redis_ready, &servers_ready]
        .into_iter()
        .find(|c| c.status != "True")
        .map(|failing| {
            let reason = match failing.type_.as_str() {
                types::CONFIG_VALID => "ConfigInvalid",
                types::REDIS_READY => "RedisNotReady",
                _ => "ServersNotReady",
            };
            cond(
                types::READY,
                false,
                reason,
                format!("{}: {}", failing.type_, failing.message),
            )
        })
        .unwrap_or_else(|| {
            cond(
                types::READY,
                true,
                "Ready",
                match &facts.endpoint {
                    Some(e) => format!("serving at {e}"),
                    None => "serving".to_owned(),
                },
            )
        });

    SignalingClusterStatus {
        observed_generation: facts.generation,
        replicas: facts.servers.as_ref().map(|d| d.replicas),
        ready_replicas: facts.servers.as_ref().map(|d| d.ready),
        endpoint: facts.endpoint.clone(),
        conditions: vec![ready, config_valid, redis_ready, servers_ready],
    }
}

fn servers_condition(
    facts: &Facts,
    selector: &str,
    cond: &dyn Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    let t = types::SERVERS_READY;
    let Some(d) = &facts.servers else {
        let why = if facts.config_error.is_some() {
            "; it is created once ConfigValid is True"
        } else {
            ""
        };
        return cond(
            t,
            false,
            "DeploymentMissing",
            format!(
                "Deployment {} does not exist yet{why}",
                names::server(&facts.name)
            ),
        );
    };
    if let Some((reason, message)) = &d.failure {
        return cond(
            t,
            false,
            reason,
            format!(
                "{}/{} server pods ready; Deployment {} reports {reason}: {message}",
                d.ready,
                d.desired,
                names::server(&facts.name)
            ),
        );
    }
    if d.desired == 0 {
        return cond(
            t,
            false,
            "ScaledToZero",
            "spec.replicas is 0: no server pods run".to_owned(),
        );
    }
    if d.ready < d.desired {
        return cond(
            t,
            false,
            "PodsPending",
            format!(
                "{}/{} server pods ready; pods that are Pending wait for a node or an image pull, \
                 running ones that are not ready fail /webrtc/health/ready (often Redis unreachable): \
                 kubectl get pods {selector}; kubectl describe pods {selector}",
                d.ready, d.desired
            ),
        );
    }
    if d.updated < d.desired || !d.observed_current {
        return cond(
            t,
            true,
            "RollingUpdate",
            format!(
                "{}/{} server pods ready; rolling out a new template ({}/{} updated)",
                d.ready, d.desired, d.updated, d.desired
            ),
        );
    }
    cond(
        t,
        true,
        "AllPodsReady",
        format!("{}/{} server pods ready", d.ready, d.desired),
    )
}

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
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
                    || (n.type_ == types::CONFIG_VALID
                        && n.status == "False"
                        && (o.reason != n.reason || o.message != n.message))
            })
        })
        .map(|n| {
            let good = n.status == "True" || n.type_ == types::PAUSED;
            (n.type_.clone(), n.reason.clone(), n.message.clone(), good)
        })
        .collect()
}

/// The condition of `type_` in `status`, if present.
pub fn find<'a>(status: &'a SignalingClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests;
