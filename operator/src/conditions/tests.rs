use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, StatefulSet,
    StatefulSetStatus,
};
use k8s_openapi::jiff::Timestamp;
use kube::core::ObjectMeta;

use super::*;
use crate::resolve::{ConfigError, ConfigErrorReason};

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn ready_servers(n: i32) -> DeploymentFacts {
    DeploymentFacts {
        desired: n,
        replicas: n,
        ready: n,
        updated: n,
        observed_current: true,
        failure: None,
    }
}

fn healthy() -> Facts {
    Facts {
        name: "demo".into(),
        namespace: "x".into(),
        generation: Some(3),
        paused: false,
        config_error: None,
        redis: RedisFacts::Managed { ready_replicas: 1 },
        servers: Some(ready_servers(2)),
        endpoint: Some("http://demo-server.x.svc".into()),
    }
}

fn get<'a>(s: &'a SignalingClusterStatus, t: &str) -> &'a Condition {
    find(s, t).unwrap_or_else(|| panic!("no {t} condition in {s:?}"))
}

fn summary(s: &SignalingClusterStatus) -> Vec<(String, String, String)> {
    s.conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn triple(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

#[test]
fn healthy_cluster_is_ready_with_every_condition_true() {
    let s = compute_status(None, &healthy(), &at(100));
    assert_eq!(
        summary(&s),
        vec![
            triple("Ready", "True", "Ready"),
            triple("ConfigValid", "True", "Resolved"),
            triple("RedisReady", "True", "RedisReady"),
            triple("ServersReady", "True", "AllPodsReady"),
        ]
    );
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.replicas, Some(2));
    assert_eq!(s.ready_replicas, Some(2));
    assert_eq!(s.endpoint.as_deref(), Some("http://demo-server.x.svc"));
    assert_eq!(get(&s, "ServersReady").message, "2/2 server pods ready");
    assert_eq!(
        get(&s, "Ready").message,
        "serving at http://demo-server.x.svc"
    );
    for c in &s.conditions {
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, at(100));
    }
}

#[test]
fn pending_pods_give_an_actionable_servers_ready_false() {
    let mut f = healthy();
    f.servers = Some(DeploymentFacts {
        ready: 0,
        ..ready_servers(2)
    });
    let s = compute_status(None, &f, &at(100));
    let c = get(&s, "ServersReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PodsPending")
    );
    assert!(
        c.message.starts_with("0/2 server pods ready; "),
        "{}",
        c.message
    );
    assert!(
        c.message
            .contains("kubectl describe pods -n x -l app.kubernetes.io/instance=demo,app.kubernetes.io/component=server"),
        "{}",
        c.message
    );
    let ready = get(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ServersNotReady")
    );
    assert_eq!(ready.message, format!("ServersReady: {}", c.message));
    assert_eq!(s.ready_replicas, Some(0));
}

#[test]
fn config_error_shows_reason_and_message_and_wins_ready() {
    let mut f = healthy();
    f.config_error = Some(ConfigError {
        reason: ConfigErrorReason::SecretKeyMissing,
        message: r#"secret "turn" in namespace "x" has no key "secret""#.into(),
    });
    let s = compute_status(None, &f, &at(100));
    let c = get(&s, "ConfigValid");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretKeyMissing")
    );
    assert!(c
        .message
        .starts_with(r#"secret "turn" in namespace "x" has no key "secret""#));
    let ready = get(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ConfigInvalid")
    );
    // The servers that still run are reported as they are.
    assert_eq!(get(&s, "ServersReady").status, "True");
}

#[test]
fn missing_deployment_under_config_error_says_why() {
    let mut f = healthy();
    f.servers = None;
    f.config_error = Some(ConfigError {
        reason: ConfigErrorReason::SecretNotFound,
        message: "m".into(),
    });
    let s = compute_status(None, &f, &at(1));
    let c = get(&s, "ServersReady");
    assert_eq!(c.reason, "DeploymentMissing");
    assert!(
        c.message.contains("once ConfigValid is True"),
        "{}",
        c.message
    );
    assert_eq!(s.replicas, None);
}

#[test]
fn redis_states() {
    let cases = [
        (RedisFacts::External, "True", "External"),
        (RedisFacts::ManagedMissing, "False", "StatefulSetMissing"),
        (
            RedisFacts::Managed { ready_replicas: 0 },
            "False",
            "RedisNotReady",
        ),
        (
            RedisFacts::Managed { ready_replicas: 1 },
            "True",
            "RedisReady",
        ),
    ];
    for (redis, status, reason) in cases {
        let mut f = healthy();
        f.redis = redis.clone();
        let s = compute_status(None, &f, &at(1));
        let c = get(&s, "RedisReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            (status, reason),
            "{redis:?}"
        );
        let ready = get(&s, "Ready");
        assert_eq!(ready.status, status, "{redis:?}");
        if status == "False" {
            assert_eq!(ready.reason, "RedisNotReady");
        }
    }
}

#[test]
fn deployment_states() {
    let cases = [
        (
            DeploymentFacts {
                failure: Some(("ProgressDeadlineExceeded".into(), "took too long".into())),
                ..ready_servers(2)
            },
            "False",
            "ProgressDeadlineExceeded",
        ),
        (
            DeploymentFacts {
                desired: 0,
                replicas: 0,
                ready: 0,
                updated: 0,
                ..ready_servers(0)
            },
            "False",
            "ScaledToZero",
        ),
        (
            DeploymentFacts {
                ready: 1,
                ..ready_servers(2)
            },
            "False",
            "PodsPending",
        ),
        (
            DeploymentFacts {
                updated: 1,
                replicas: 3,
                ..ready_servers(2)
            },
            "True",
            "RollingUpdate",
        ),
        (
            DeploymentFacts {
                observed_current: false,
                ..ready_servers(2)
            },
            "True",
            "RollingUpdate",
        ),
        (ready_servers(3), "True", "AllPodsReady"),
    ];
    for (d, status, reason) in cases {
        let mut f = healthy();
        f.servers = Some(d.clone());
        let s = compute_status(None, &f, &at(1));
        let c = get(&s, "ServersReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            (status, reason),
            "{d:?}"
        );
    }
}

#[test]
fn last_transition_time_is_kept_unless_the_status_flips() {
    let first = compute_status(None, &healthy(), &at(100));
    // Same facts later: identical status, so the runtime has nothing to write.
    let again = compute_status(Some(&first), &healthy(), &at(200));
    assert_eq!(again, first);

    // Servers drop: ServersReady and Ready flip and get the new time; the others keep theirs.
    let mut f = healthy();
    f.servers = Some(DeploymentFacts {
        ready: 1,
        ..ready_servers(2)
    });
    let degraded = compute_status(Some(&again), &f, &at(300));
    assert_eq!(get(&degraded, "ServersReady").last_transition_time, at(300));
    assert_eq!(get(&degraded, "Ready").last_transition_time, at(300));
    assert_eq!(get(&degraded, "ConfigValid").last_transition_time, at(100));
    assert_eq!(get(&degraded, "RedisReady").last_transition_time, at(100));

    // Still degraded but with a different message: no new transition.
    f.servers = Some(DeploymentFacts {
        ready: 0,
        ..ready_servers(2)
    });
    let worse = compute_status(Some(&degraded), &f, &at(400));
    assert_eq!(get(&worse, "ServersReady").last_transition_time, at(300));
    assert!(get(&worse, "ServersReady").message.starts_with("0/2"));
}

#[test]
fn new_generation_updates_observed_generation_everywhere() {
    let first = compute_status(None, &healthy(), &at(100));
    let mut f = healthy();
    f.generation = Some(4);
    let s = compute_status(Some(&first), &f, &at(200));
    assert_eq!(s.observed_generation, Some(4));
    assert!(s
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(4)));
    assert!(s
        .conditions
        .iter()
        .all(|c| c.last_transition_time == at(100)));
}

#[test]
fn paused_adds_paused_and_keeps_everything_else() {
    let before = compute_status(None, &healthy(), &at(100));
    let mut f = healthy();
    f.paused = true;
    f.generation = Some(4); // setting spec.paused bumps the generation
    f.servers = None; // ignored while paused
    let paused = compute_status(Some(&before), &f, &at(200));
    assert_eq!(paused.observed_generation, Some(4));
    let p = get(&paused, "Paused");
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Paused"));
    assert_eq!(p.last_transition_time, at(200));
    assert_eq!(paused.conditions[..4], before.conditions[..]);
    assert_eq!(paused.replicas, before.replicas);

    // Paused again later: nothing changes.
    assert_eq!(compute_status(Some(&paused), &f, &at(300)), paused);

    // Unpaused: the Paused condition goes away.
    let resumed = compute_status(Some(&paused), &healthy(), &at(400));
    assert!(find(&resumed, "Paused").is_none());
    assert_eq!(resumed.conditions, before.conditions);
}

#[test]
fn deployment_facts_from_a_deployment() {
    let d = Deployment {
        metadata: ObjectMeta {
            generation: Some(5),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(3),
            ready_replicas: Some(2),
            updated_replicas: Some(1),
            conditions: Some(vec![
                DeploymentCondition {
                    type_: "Available".into(),
                    status: "True".into(),
                    ..DeploymentCondition::default()
                },
                DeploymentCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    reason: Some("FailedCreate".into()),
                    message: Some("exceeded quota".into()),
                    ..DeploymentCondition::default()
                },
            ]),
            ..DeploymentStatus::default()
        }),
    };
    assert_eq!(
        DeploymentFacts::from_deployment(&d),
        DeploymentFacts {
            desired: 3,
            replicas: 3,
            ready: 2,
            updated: 1,
            observed_current: false,
            failure: Some(("FailedCreate".into(), "exceeded quota".into())),
        }
    );
    // A Deployment without status (just created): nothing ready, not yet observed.
    let fresh = Deployment { status: None, ..d };
    let facts = DeploymentFacts::from_deployment(&fresh);
    assert_eq!(
        (facts.ready, facts.observed_current, facts.failure),
        (0, false, None)
    );
}

#[test]
fn redis_facts_from_a_statefulset() {
    assert_eq!(
        RedisFacts::from_statefulset(None),
        RedisFacts::ManagedMissing
    );
    let sts = StatefulSet {
        status: Some(StatefulSetStatus {
            ready_replicas: Some(1),
            ..StatefulSetStatus::default()
        }),
        ..StatefulSet::default()
    };
    assert_eq!(
        RedisFacts::from_statefulset(Some(&sts)),
        RedisFacts::Managed { ready_replicas: 1 }
    );
    assert_eq!(
        RedisFacts::from_statefulset(Some(&StatefulSet::default())),
        RedisFacts::Managed { ready_replicas: 0 }
    );
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
