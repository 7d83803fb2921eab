//! Reconcile scenarios against an in-memory API server behind a real `kube::Client`
//! (`crate::fake_api`): each test states the API calls a reconcile makes, in order, and what the
//! stored objects look like afterwards; plus the error paths a real server rarely produces on
//! demand (a lost create race, a 500 on apply). The real-server layer is
//! operator/tests/e2e_rig.rs.

use http::Method;
use serde_json::json;

use super::*;
use crate::fake_api::{
    deployment, ingress, network_policy, secret, service, statefulset, Expect, FakeApi, NS, SC_PATH,
};

fn condition(sc: &SignalingCluster, t: &str) -> Option<Condition> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
}

// Parts of scenarios, chained with `Expect::then`.

/// Both generated Secrets of a bare cluster: looked for, created, announced.
fn generated_secrets_created(e: Expect) -> Expect {
    e.get_missing(&secret("sc-jwt"))
        .create(&secret("sc-jwt"))
        .event("SecretGenerated")
        .get_missing(&secret("sc-redis-auth"))
        .create(&secret("sc-redis-auth"))
        .event("SecretGenerated")
}

/// The config Secret and the managed Redis (StatefulSet, Service, NetworkPolicy) created.
fn config_and_redis_created(e: Expect) -> Expect {
    e.get_missing(&secret("sc-config"))
        .apply(&secret("sc-config"))
        .get_missing(&statefulset("sc-redis"))
        .apply(&statefulset("sc-redis"))
        .get_missing(&service("sc-redis"))
        .apply(&service("sc-redis"))
        .get_missing(&network_policy("sc-redis"))
        .apply(&network_policy("sc-redis"))
}

/// The server Deployment and Service created; no Ingress found to delete.
fn servers_created(e: Expect) -> Expect {
    e.get_missing(&deployment("sc-server"))
        .apply(&deployment("sc-server"))
        .get_missing(&service("sc-server"))
        .apply(&service("sc-server"))
        .get_missing(&ingress("sc-server"))
}

/// The first status of a bare cluster whose pods are not ready: one event per (new)
/// condition, in status order (Ready, ConfigValid, RedisReady, ServersReady).
fn first_status(e: Expect) -> Expect {
    e.apply_status()
        .event("RedisNotReady")
        .event("Resolved")
        .event("RedisNotReady")
        .event("PodsPending")
}

/// Reads of a bare cluster's generated Secrets, both there.
fn generated_secrets_read(e: Expect) -> Expect {
    e.get(&secret("sc-jwt")).get(&secret("sc-redis-auth"))
}

/// Reads of a bare cluster's Secrets and managed Redis, all there and up to date.
fn secrets_and_redis_read(e: Expect) -> Expect {
    e.then(generated_secrets_read)
        .get(&secret("sc-config"))
        .get(&statefulset("sc-redis"))
        .get(&service("sc-redis"))
        .get(&network_policy("sc-redis"))
}

/// The first reconcile of a bare `spec: {}` cluster: everything created, one Applied event,
/// then the status.
fn first_reconcile_of_a_bare_cluster(fake: &FakeApi) -> Expect {
    fake.expect()
        .then(generated_secrets_created)
        .then(config_and_redis_created)
        .then(servers_created)
        .event("Applied")
        .then(first_status)
}

/// A fake holding a bare cluster after its first reconcile (checked step by step).
async fn reconciled_bare_cluster() -> (FakeApi, Context) {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    first_reconcile_of_a_bare_cluster(&fake).done();
    (fake, ctx)
}

/// A reconcile of the bare cluster when everything is up to date: reads only.
fn up_to_date_reads(fake: &FakeApi) -> Expect {
    fake.expect()
        .then(secrets_and_redis_read)
        .get(&deployment("sc-server"))
        .get(&service("sc-server"))
        .get_missing(&ingress("sc-server"))
}

#[tokio::test]
async fn first_reconcile_creates_everything_and_the_second_only_reads() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({}));

    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DRIFT_REQUEUE));
    first_reconcile_of_a_bare_cluster(&fake).done();
    assert!(fake.get(&secret("sc-jwt")).is_some());
    assert!(fake.get(&secret("sc-redis-auth")).is_some());
    let sc = fake.reread();
    assert_eq!(sc.status.as_ref().unwrap().observed_generation, Some(1));
    assert_eq!(condition(&sc, "ConfigValid").unwrap().status, "True");

    // Nothing changed: the second reconcile only reads (no apply, no status, no event).
    let events_before = fake.events().len();
    reconcile(&sc, &ctx).await.unwrap();
    up_to_date_reads(&fake).done();
    assert_eq!(fake.events().len(), events_before);
}

#[tokio::test]
async fn drift_is_reapplied_and_generated_secrets_are_never_rewritten() {
    let (fake, ctx) = reconciled_bare_cluster().await;
    let sc = fake.reread();
    let jwt = fake.get(&secret("sc-jwt")).unwrap();

    // Someone scales the Deployment by hand: only it is applied again.
    let dpath = deployment("sc-server");
    let mut d = fake.get(&dpath).unwrap();
    d["spec"]["replicas"] = json!(7);
    fake.put(&dpath, d);
    reconcile(&sc, &ctx).await.unwrap();
    fake.expect()
        .then(secrets_and_redis_read)
        .get(&dpath)
        .apply(&dpath)
        .get(&service("sc-server"))
        .get_missing(&ingress("sc-server"))
        .event("Applied")
        .done();
    assert_eq!(fake.get(&dpath).unwrap()["spec"]["replicas"], json!(2));
    assert_eq!(fake.get(&secret("sc-jwt")).unwrap(), jwt);
}

#[tokio::test]
async fn a_lost_create_race_uses_the_winners_secret() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({"redis": {"external": {"secretRef": {"name": "redis"}}}}));
    fake.put(
        &secret("redis"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NS},
               "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}}),
    );
    // Another writer created sc-jwt between our GET (404) and our POST (409).
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sc-jwt", "namespace": NS},
        "data": {"secret": "dGhlaXItd2lubmluZy1rZXktb2YtYXQtbGVhc3QtMzItYnl0ZXM="}}); // "their-winning-key-of-at-least-32-bytes"
    fake.put(&secret("sc-jwt"), theirs.clone());
    fake.fault(Method::GET, "/secrets/sc-jwt", 404, 1);

    reconcile(&sc, &ctx).await.unwrap();
    fake.expect()
        .get_missing(&secret("sc-jwt"))
        .create(&secret("sc-jwt"))
        .fails(409)
        // No SecretGenerated event: theirs is read and used.
        .get(&secret("sc-jwt"))
        .get(&secret("redis"))
        .get_missing(&secret("sc-config"))
        .apply(&secret("sc-config"))
        // External Redis: the managed Redis objects are looked for, to delete, not applied.
        .get_missing(&statefulset("sc-redis"))
        .get_missing(&service("sc-redis"))
        .get_missing(&network_policy("sc-redis"))
        .get_missing(&deployment("sc-server"))
        .apply(&deployment("sc-server"))
        .get_missing(&service("sc-server"))
        .apply(&service("sc-server"))
        .get_missing(&ingress("sc-server"))
        .event("Applied")
        .apply_status()
        .event("ServersNotReady")
        .event("Resolved")
        .event("External")
        .event("PodsPending")
        .done();
    let stored = fake.get(&secret("sc-jwt")).unwrap();
    assert_eq!(stored["data"], theirs["data"]);
    let config = fake.get(&secret("sc-config")).unwrap();
    let yaml = config["data"]["config.yaml"].as_str().unwrap();
    let yaml: Vec<u8> = serde_json::from_value::<k8s_openapi::ByteString>(json!(yaml))
        .unwrap()
        .0;
    assert!(
        String::from_utf8(yaml)
            .unwrap()
            .contains("their-winning-key-of-at-least-32-bytes"),
        "config does not use the existing secret"
    );
}

#[tokio::test]
async fn a_server_error_fails_the_reconcile_with_a_bounded_label() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({}));
    fake.fault(Method::PATCH, "/deployments/sc-server", 500, 1);

    let err = reconcile(&sc, &ctx).await.unwrap_err();
    assert_eq!(err.metric_label(), "server_error");
    assert!(err.to_string().contains("Deployment sc-server"), "{err}");
    // The reconcile stops at the failed apply: no Applied event, no status.
    fake.expect()
        .then(generated_secrets_created)
        .then(config_and_redis_created)
        .get_missing(&deployment("sc-server"))
        .apply(&deployment("sc-server"))
        .fails(500)
        .done();

    // The retry (after backoff) picks up where it failed.
    reconcile(&sc, &ctx).await.unwrap();
    fake.expect()
        .then(secrets_and_redis_read)
        .then(servers_created)
        .event("Applied")
        .then(first_status)
        .done();
    assert!(fake.get(&deployment("sc-server")).is_some());
}

#[tokio::test]
async fn a_missing_user_secret_only_writes_status() {
    let (fake, ctx) = reconciled_bare_cluster().await;
    let dpath = deployment("sc-server");
    let before = fake.get(&dpath).unwrap();

    let sc = fake.edit_spec(
        json!({"ice": {"turnUrls": ["turn:t.example.com:3478"], "turnSecretRef": {"name": "nope"}}}),
    );
    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    // Only the status may change; the running children are read, never written.
    fake.expect()
        .then(generated_secrets_read)
        .get_missing(&secret("nope"))
        .get(&dpath)
        .get(&statefulset("sc-redis"))
        .apply_status()
        // ConfigValid flips; Ready was False already.
        .event("SecretNotFound")
        .done();
    assert_eq!(fake.get(&dpath).unwrap(), before);
    let sc = fake.reread();
    let c = condition(&sc, "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(c.message.contains("\"nope\""), "{}", c.message);
    assert!(fake
        .events()
        .iter()
        .any(|e| e["reason"] == "SecretNotFound" && e["type"] == "Warning"));
}

#[tokio::test]
async fn turned_off_parts_are_deleted_only_when_owned() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({"ingress": {"enabled": true, "host": "signal.example.com"}}));
    reconcile(&sc, &ctx).await.unwrap();
    let ing = ingress("sc-server");
    assert!(fake.get(&ing).is_some(), "ingress not created");
    fake.clear_calls();

    // Ingress off, and Redis external: the managed Redis objects go, but a NetworkPolicy with
    // that name that the user made (no owner reference) stays.
    let np = network_policy("sc-redis");
    let mut user_np = fake.get(&np).unwrap();
    user_np["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    fake.put(&np, user_np);
    fake.put(
        &secret("redis"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NS},
               "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}}),
    );
    let sc = fake.edit_spec(json!({"redis": {"external": {"secretRef": {"name": "redis"}}}}));
    reconcile(&sc, &ctx).await.unwrap();
    fake.expect()
        .get(&secret("sc-jwt"))
        .get(&secret("redis"))
        .get(&secret("sc-config"))
        .apply(&secret("sc-config"))
        .get(&statefulset("sc-redis"))
        .delete(&statefulset("sc-redis"))
        .get(&service("sc-redis"))
        .delete(&service("sc-redis"))
        // The user's NetworkPolicy: read, left alone.
        .get(&np)
        .get(&deployment("sc-server"))
        .apply(&deployment("sc-server"))
        .get(&service("sc-server"))
        .get(&ing)
        .delete(&ing)
        .event("Applied")
        .apply_status()
        .event("External")
        .done();
    assert!(fake.get(&np).is_some());
    assert!(fake.get(&statefulset("sc-redis")).is_none());
    // Generated secrets are never deleted by the operator (garbage collection does that).
    assert!(fake.get(&secret("sc-redis-auth")).is_some());
}

#[tokio::test]
async fn an_api_the_server_lacks_is_a_config_error_not_a_retry_loop() {
    let fake = FakeApi::default();
    let ctx = fake.context(); // neither autoscaling/v2 nor policy/v1
    let sc = fake.cluster(
        json!({"autoscaling": {"enabled": true}, "podDisruptionBudget": {"enabled": true}}),
    );
    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    // Nothing is applied: the workloads are only read for the status.
    fake.expect()
        .then(generated_secrets_created)
        .get_missing(&deployment("sc-server"))
        .get_missing(&statefulset("sc-redis"))
        .apply_status()
        .event("ConfigInvalid")
        .event("ApiUnavailable")
        .event("StatefulSetMissing")
        .event("DeploymentMissing")
        .done();
    let sc = fake.reread();
    let c = condition(&sc, "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ApiUnavailable")
    );
    assert!(c.message.contains("autoscaling/v2"), "{}", c.message);
}

#[tokio::test]
async fn a_name_taken_by_someone_elses_object_is_reported_not_taken_over() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let dpath = deployment("sc-server");
    let users = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sc-server", "namespace": NS, "uid": "user-uid"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mine"}},
                 "template": {"metadata": {"labels": {"app": "mine"}},
                              "spec": {"containers": [{"name": "c", "image": "mine"}]}}}});
    fake.put(&dpath, users);
    let before = fake.get(&dpath).unwrap();
    let sc = fake.cluster(json!({}));

    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    fake.expect()
        .then(generated_secrets_created)
        .then(config_and_redis_created)
        // The user's Deployment: read, never applied; the reconcile stops there.
        .get(&dpath)
        .get(&dpath)
        .get(&statefulset("sc-redis"))
        .apply_status()
        .event("ConfigInvalid")
        .event("ObjectNotOwned")
        .event("RedisNotReady")
        .event("PodsPending")
        .done();
    assert_eq!(
        fake.get(&dpath).unwrap(),
        before,
        "the user's Deployment was modified"
    );
    let c = condition(&fake.reread(), "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ObjectNotOwned")
    );
    assert!(
        c.message
            .contains("Deployment sc-server already exists and is not owned"),
        "{}",
        c.message
    );
}

#[tokio::test]
async fn status_is_applied_whole_so_a_cleared_condition_goes() {
    let (fake, ctx) = reconciled_bare_cluster().await;

    // Paused: only the status is written, with a Paused condition.
    let sc = fake.edit_spec(json!({"paused": true}));
    assert_eq!(reconcile(&sc, &ctx).await.unwrap(), Action::await_change());
    fake.expect().apply_status().event("Paused").done();
    assert_eq!(
        condition(&fake.reread(), "Paused").map(|c| c.status),
        Some("True".to_owned())
    );

    // Unpaused: the applied status leaves Paused out, and (applied, not merged) it is gone.
    let sc = fake.edit_spec(json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    up_to_date_reads(&fake).apply_status().done();
    let status = fake.get(SC_PATH).unwrap()["status"].clone();
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Ready", "ConfigValid", "RedisReady", "ServersReady"]
    );
    assert_eq!(status["observedGeneration"], json!(3));
}

#[tokio::test]
async fn every_event_shows_its_own_note() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(
        fake.event_notes("SecretGenerated"),
        vec![
            "generated Secret sc-jwt".to_owned(),
            "generated Secret sc-redis-auth".to_owned()
        ]
    );
    let applied = fake.event_notes("Applied");
    assert_eq!(applied.len(), 1, "{applied:#?}");
    assert!(
        applied[0].starts_with("created Secret sc-config, "),
        "{applied:#?}"
    );

    // A replicas change: a second Applied event, with its own note.
    let sc = fake.edit_spec(json!({"replicas": 3}));
    reconcile(&sc, &ctx).await.unwrap();
    let applied = fake.event_notes("Applied");
    assert_eq!(applied.len(), 2, "{applied:#?}");
    assert!(
        applied.contains(&"updated Deployment sc-server".to_owned()),
        "{applied:#?}"
    );
}

#[tokio::test]
async fn a_second_user_error_while_config_valid_stays_false_gets_its_own_warning() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let missing = |secret: &str| json!({"ice": {"turnUrls": ["turn:t.example.com:3478"], "turnSecretRef": {"name": secret}}});
    let sc = fake.cluster(missing("first-missing"));
    reconcile(&sc, &ctx).await.unwrap();
    let sc = fake.edit_spec(missing("second-missing"));
    fake.clear_calls();
    reconcile(&sc, &ctx).await.unwrap();
    // The Secrets are read, the second one is missing; nothing runs, which is read too.
    let reads = |e: Expect| {
        e.then(generated_secrets_read)
            .get_missing(&secret("second-missing"))
            .get_missing(&deployment("sc-server"))
            .get_missing(&statefulset("sc-redis"))
    };
    // Still ConfigValid=False, but another Secret: a new Warning.
    fake.expect()
        .then(reads)
        .apply_status()
        .event("SecretNotFound")
        .done();
    let c = condition(&fake.reread(), "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    let notes = fake.event_notes("SecretNotFound");
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes[0].contains("\"first-missing\""), "{notes:#?}");
    assert!(notes[1].contains("\"second-missing\""), "{notes:#?}");
    assert!(fake
        .events()
        .iter()
        .filter(|e| e["reason"] == "SecretNotFound")
        .all(|e| e["type"] == "Warning"));
    // The same error again: neither a status write nor an event.
    reconcile(&fake.reread(), &ctx).await.unwrap();
    fake.expect().then(reads).done();
    assert_eq!(fake.event_notes("SecretNotFound").len(), 2);
}

#[tokio::test]
async fn every_write_names_the_operators_field_manager() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    let sc = fake.cluster(json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    let uris = fake.uris();
    let writes: Vec<&String> = uris
        .iter()
        .filter(|u| !u.starts_with("GET ") && !u.contains("/events"))
        .collect();
    assert!(
        writes
            .iter()
            .any(|u| u.starts_with(&format!("PATCH {SC_PATH}/status?"))),
        "{writes:#?}"
    );
    for w in &writes {
        assert!(
            w.contains("fieldManager=switchboard-operator"),
            "write without the operator's field manager: {w}"
        );
    }
}

/// config.yaml of the stored config Secret.
fn stored_config(fake: &FakeApi) -> String {
    let config = fake.get(&secret("sc-config")).unwrap();
    let bytes: k8s_openapi::ByteString =
        serde_json::from_value(config["data"]["config.yaml"].clone()).unwrap();
    String::from_utf8(bytes.0).unwrap()
}

#[tokio::test]
async fn a_public_jwt_key_gets_one_resume_key_that_later_reconciles_keep() {
    let fake = FakeApi::default();
    let ctx = fake.context();
    fake.put(
        &secret("pub"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pub", "namespace": NS},
               // "-----BEGIN PUBLIC KEY-----\n"
               "data": {"public.pem": "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K"}}),
    );
    let spec = |grace: i64| {
        json!({"auth": {"algorithm": "RS256", "secretRef": {"name": "pub"}},
               "resume": {"graceSeconds": grace}})
    };
    let sc = fake.cluster(spec(20));
    reconcile(&sc, &ctx).await.unwrap();
    fake.expect()
        .get_missing(&secret("sc-redis-auth"))
        .create(&secret("sc-redis-auth"))
        .event("SecretGenerated")
        .get_missing(&secret("sc-resume"))
        .create(&secret("sc-resume"))
        .event("SecretGenerated")
        .get(&secret("pub"))
        .then(config_and_redis_created)
        .then(servers_created)
        .event("Applied")
        .then(first_status)
        .done();
    let generated = fake.get(&secret("sc-resume")).unwrap();
    let key: k8s_openapi::ByteString =
        serde_json::from_value(generated["data"]["secret"].clone()).unwrap();
    let key = String::from_utf8(key.0).unwrap();
    assert_eq!(key.len(), 64, "32 random bytes, hex");
    assert!(
        stored_config(&fake).ends_with(&format!("\nresume:\n  grace_secs: 20\n  secret: {key}\n")),
        "{}",
        stored_config(&fake)
    );
    assert!(
        fake.event_notes("SecretGenerated")
            .iter()
            .all(|n| !n.contains(&key)),
        "an event shows the key"
    );

    // A settings change re-renders with the same key; the Secret is read, never written.
    let sc = fake.edit_spec(spec(40));
    reconcile(&sc, &ctx).await.unwrap();
    let calls = fake.calls();
    fake.clear_calls();
    assert!(
        calls.contains(&format!("get {}", secret("sc-resume")))
            && !calls
                .iter()
                .any(|c| c.contains("sc-resume") && !c.starts_with("get ")),
        "{calls:#?}"
    );
    assert_eq!(fake.get(&secret("sc-resume")).unwrap(), generated);
    assert!(
        stored_config(&fake).ends_with(&format!("\nresume:\n  grace_secs: 40\n  secret: {key}\n"))
    );
}
