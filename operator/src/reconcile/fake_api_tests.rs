//! Reconcile against an in-memory API server behind a real `kube::Client`: the error paths a
//! real server rarely produces on demand (a lost create race, a 500 on apply), and exact
//! accounting of the writes a reconcile makes. The real-server layer is operator/tests/e2e_rig.rs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use kube::runtime::events::Reporter;
use kube::Client;
use serde_json::{json, Value};

use super::*;

/// A fault injected for requests whose method matches and whose path contains `path`.
struct Fault {
    method: Method,
    path: String,
    status: u16,
    times: usize,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    rv: u64,
    /// Every request as "METHOD path".
    log: Vec<String>,
    /// Every request as "METHOD path?query".
    uris: Vec<String>,
    faults: Vec<Fault>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

const NS: &str = "ns";
const SC_PATH: &str = "/apis/switchboard.dev/v1alpha1/namespaces/ns/signalingclusters/sc";

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Deep merge used for apply and merge patches: objects merge key by key, null deletes,
/// everything else replaces.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl FakeApi {
    fn put(&self, path: &str, obj: Value) {
        let mut s = self.0.lock().unwrap();
        s.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        s.objects.insert(path.to_owned(), obj);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    fn fault(&self, method: Method, path: &str, status: u16, times: usize) {
        self.0.lock().unwrap().faults.push(Fault {
            method,
            path: path.to_owned(),
            status,
            times,
        });
    }

    /// Requests other than GET, ignoring Events (they are best effort and asserted apart).
    fn writes(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| !l.starts_with("GET ") && !l.contains("/events"))
            .cloned()
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn clear_log(&self) {
        self.0.lock().unwrap().log.clear();
    }

    fn handle(&self, method: Method, path: String, body: Bytes) -> (u16, Value) {
        let mut s = self.0.lock().unwrap();
        s.log.push(format!("{method} {path}"));
        if let Some(f) = s
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path))
        {
            f.times -= 1;
            let code = f.status;
            let reason = match code {
                404 => "NotFound",
                409 => "Conflict",
                _ => "InternalError",
            };
            return (code, status_body(code, reason, "injected fault"));
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match method {
            Method::GET => match s.objects.get(&path) {
                Some(o) => (200, o.clone()),
                None => (404, status_body(404, "NotFound", "not found")),
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| {
                        body["metadata"]["generateName"]
                            .as_str()
                            .map(|g| format!("{g}x"))
                    })
                    .unwrap_or_default();
                let item = format!("{path}/{name}");
                if s.objects.contains_key(&item) {
                    return (409, status_body(409, "AlreadyExists", "already exists"));
                }
                s.rv += 1;
                let mut obj = body;
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                obj["metadata"]["uid"] = json!(format!("uid-{}", s.rv));
                s.objects.insert(item, obj.clone());
                (201, obj)
            }
            Method::PATCH => {
                let (item, sub) = match path.strip_suffix("/status") {
                    Some(p) if p.contains("/signalingclusters/") => (p.to_owned(), true),
                    _ => (path.clone(), false),
                };
                let current = s.objects.get(&item).cloned();
                if current.is_none() && sub {
                    return (404, status_body(404, "NotFound", "not found"));
                }
                let mut obj = current.clone().unwrap_or_else(|| json!({"metadata": {}}));
                let patch = if sub {
                    json!({"status": body["status"]})
                } else {
                    body
                };
                merge(&mut obj, &patch);
                if Some(&obj) != current.as_ref() {
                    s.rv += 1;
                    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    if current.is_none() {
                        obj["metadata"]["uid"] = json!(format!("uid-{}", s.rv));
                    }
                }
                s.objects.insert(item, obj.clone());
                (200, obj)
            }
            Method::DELETE => match s.objects.remove(&path) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                ),
                None => (404, status_body(404, "NotFound", "not found")),
            },
            _ => (405, status_body(405, "MethodNotAllowed", "")),
        }
    }

    fn client(&self) -> Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                fake.0.lock().unwrap().uris.push(format!(
                    "{} {}",
                    parts.method,
                    parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
                ));
                let (code, value) = fake.handle(parts.method, parts.uri.path().to_owned(), bytes);
                let resp = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(value.to_string())))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        Client::new(service, NS)
    }
}

fn context(fake: &FakeApi) -> Context {
    let client = fake.client();
    Context {
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some("test".into()),
        },
        client,
        metrics: std::sync::Arc::new(Metrics::new()),
        backoff: Backoff::default(),
        support: ApiSupport::default(),
    }
}

/// Stores the cluster in the fake and returns it as read back (with resourceVersion).
fn cluster(fake: &FakeApi, spec: Value) -> SignalingCluster {
    fake.put(
        SC_PATH,
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "sc", "namespace": NS, "uid": "sc-uid", "generation": 1},
            "spec": spec
        }),
    );
    reread(fake)
}

fn reread(fake: &FakeApi) -> SignalingCluster {
    serde_json::from_value(fake.get(SC_PATH).unwrap()).unwrap()
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/ns/secrets/{name}")
}

fn condition(sc: &SignalingCluster, t: &str) -> Option<Condition> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
}

#[tokio::test]
async fn first_reconcile_creates_everything_and_the_second_writes_nothing() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));

    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DRIFT_REQUEUE));
    let writes = fake.writes();
    for expected in [
        "POST /api/v1/namespaces/ns/secrets", // generated: jwt, redis-auth
        "PATCH /api/v1/namespaces/ns/secrets/sc-config",
        "PATCH /apis/apps/v1/namespaces/ns/statefulsets/sc-redis",
        "PATCH /api/v1/namespaces/ns/services/sc-redis",
        "PATCH /apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/sc-redis",
        "PATCH /apis/apps/v1/namespaces/ns/deployments/sc-server",
        "PATCH /api/v1/namespaces/ns/services/sc-server",
        "PATCH /apis/switchboard.dev/v1alpha1/namespaces/ns/signalingclusters/sc/status",
    ] {
        assert!(
            writes.iter().any(|w| w == expected),
            "missing {expected} in {writes:#?}"
        );
    }
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("POST ")).count(),
        2,
        "{writes:#?}"
    );
    assert!(fake.get(&secret_path("sc-jwt")).is_some());
    assert!(fake.get(&secret_path("sc-redis-auth")).is_some());
    let sc = reread(&fake);
    assert_eq!(sc.status.as_ref().unwrap().observed_generation, Some(1));
    assert_eq!(condition(&sc, "ConfigValid").unwrap().status, "True");
    assert!(
        !fake.events().is_empty(),
        "no events on the first transitions"
    );

    // Nothing changed: the second reconcile only reads.
    fake.clear_log();
    let events_before = fake.events().len();
    reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(fake.writes(), Vec::<String>::new());
    assert_eq!(
        fake.events().len(),
        events_before,
        "events without a transition"
    );
}

#[tokio::test]
async fn drift_is_reapplied_and_generated_secrets_are_never_rewritten() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    let sc = reread(&fake);
    let jwt = fake.get(&secret_path("sc-jwt")).unwrap();

    // Someone scales the Deployment by hand.
    let dpath = "/apis/apps/v1/namespaces/ns/deployments/sc-server";
    let mut d = fake.get(dpath).unwrap();
    d["spec"]["replicas"] = json!(7);
    fake.put(dpath, d);
    fake.clear_log();
    reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(fake.writes(), vec![format!("PATCH {dpath}")]);
    assert_eq!(fake.get(dpath).unwrap()["spec"]["replicas"], json!(2));
    assert_eq!(fake.get(&secret_path("sc-jwt")).unwrap(), jwt);
}

#[tokio::test]
async fn a_lost_create_race_uses_the_winners_secret() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(
        &fake,
        json!({"redis": {"external": {"secretRef": {"name": "redis"}}}}),
    );
    fake.put(
        &secret_path("redis"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NS},
               "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}}),
    );
    // Another writer created sc-jwt between our GET (404) and our POST (409).
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sc-jwt", "namespace": NS},
        "data": {"secret": "dGhlaXItd2lubmluZy1rZXktb2YtYXQtbGVhc3QtMzItYnl0ZXM="}}); // "their-winning-key-of-at-least-32-bytes"
    fake.put(&secret_path("sc-jwt"), theirs.clone());
    fake.fault(Method::GET, "/secrets/sc-jwt", 404, 1);

    reconcile(&sc, &ctx).await.unwrap();
    let stored = fake.get(&secret_path("sc-jwt")).unwrap();
    assert_eq!(stored["data"], theirs["data"]);
    assert!(fake
        .writes()
        .iter()
        .all(|w| !w.ends_with("/secrets/sc-jwt")));
    let config = fake.get(&secret_path("sc-config")).unwrap();
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
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));
    fake.fault(Method::PATCH, "/deployments/sc-server", 500, 1);

    let err = reconcile(&sc, &ctx).await.unwrap_err();
    assert_eq!(err.metric_label(), "server_error");
    assert!(err.to_string().contains("Deployment sc-server"), "{err}");
    // The retry (after backoff) succeeds.
    reconcile(&sc, &ctx).await.unwrap();
    assert!(fake
        .get("/apis/apps/v1/namespaces/ns/deployments/sc-server")
        .is_some());
}

#[tokio::test]
async fn a_missing_user_secret_only_writes_status() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    let dpath = "/apis/apps/v1/namespaces/ns/deployments/sc-server";
    let deployment = fake.get(dpath).unwrap();

    fake.put(
        SC_PATH,
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "sc", "namespace": NS, "uid": "sc-uid", "generation": 2},
            "spec": {"ice": {"turnUrls": ["turn:t.example.com:3478"], "turnSecretRef": {"name": "nope"}}},
            "status": reread(&fake).status
        }),
    );
    let sc = reread(&fake);
    fake.clear_log();
    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    assert_eq!(
        fake.writes(),
        vec![format!("PATCH {SC_PATH}/status")],
        "only the status may change"
    );
    assert_eq!(fake.get(dpath).unwrap(), deployment);
    let sc = reread(&fake);
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
    let ctx = context(&fake);
    let sc = cluster(
        &fake,
        json!({"ingress": {"enabled": true, "host": "signal.example.com"}}),
    );
    reconcile(&sc, &ctx).await.unwrap();
    let ing = "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/sc-server";
    assert!(fake.get(ing).is_some(), "ingress not created");

    // Ingress off, and Redis external: the managed Redis objects go, but a NetworkPolicy with
    // that name that the user made (no owner reference) stays.
    let np = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/sc-redis";
    let mut user_np = fake.get(np).unwrap();
    user_np["metadata"]["ownerReferences"] = Value::Null;
    user_np["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    fake.put(np, user_np.clone());
    fake.put(
        &secret_path("redis"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NS},
               "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}}),
    );
    fake.put(
        SC_PATH,
        json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "sc", "namespace": NS, "uid": "sc-uid", "generation": 2},
            "spec": {"redis": {"external": {"secretRef": {"name": "redis"}}}}
        }),
    );
    let sc = reread(&fake);
    fake.clear_log();
    reconcile(&sc, &ctx).await.unwrap();
    let writes = fake.writes();
    assert!(writes.contains(&format!("DELETE {ing}")), "{writes:#?}");
    assert!(writes.contains(&"DELETE /apis/apps/v1/namespaces/ns/statefulsets/sc-redis".to_owned()));
    assert!(writes.contains(&"DELETE /api/v1/namespaces/ns/services/sc-redis".to_owned()));
    assert!(!writes
        .iter()
        .any(|w| w.starts_with("DELETE") && w.ends_with("/networkpolicies/sc-redis")));
    assert!(fake.get(np).is_some());
    // Generated secrets are never deleted by the operator (garbage collection does that).
    assert!(!writes
        .iter()
        .any(|w| w.starts_with("DELETE") && w.contains("/secrets/")));
}

#[tokio::test]
async fn an_api_the_server_lacks_is_a_config_error_not_a_retry_loop() {
    let fake = FakeApi::default();
    let ctx = context(&fake); // ApiSupport::default(): neither autoscaling/v2 nor policy/v1
    let sc = cluster(
        &fake,
        json!({"autoscaling": {"enabled": true}, "podDisruptionBudget": {"enabled": true}}),
    );
    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    let sc = reread(&fake);
    let c = condition(&sc, "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ApiUnavailable")
    );
    assert!(c.message.contains("autoscaling/v2"), "{}", c.message);
    assert!(fake
        .writes()
        .iter()
        .all(|w| !w.contains("/deployments/") && !w.contains("horizontalpodautoscalers")));
}

#[tokio::test]
async fn a_name_taken_by_someone_elses_object_is_reported_not_taken_over() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let dpath = "/apis/apps/v1/namespaces/ns/deployments/sc-server";
    let users = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sc-server", "namespace": NS, "uid": "user-uid"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mine"}},
                 "template": {"metadata": {"labels": {"app": "mine"}},
                              "spec": {"containers": [{"name": "c", "image": "mine"}]}}}});
    fake.put(dpath, users);
    let before = fake.get(dpath).unwrap();
    let sc = cluster(&fake, json!({}));

    let action = reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(CONFIG_ERROR_REQUEUE));
    assert_eq!(
        fake.get(dpath).unwrap(),
        before,
        "the user's Deployment was modified"
    );
    assert!(!fake
        .writes()
        .iter()
        .any(|w| w.ends_with("/deployments/sc-server")));
    let c = condition(&reread(&fake), "ConfigValid").unwrap();
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

/// Notes of the stored events with this reason, sorted.
fn event_notes(fake: &FakeApi, reason: &str) -> Vec<String> {
    let mut notes: Vec<String> = fake
        .events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect();
    notes.sort();
    notes
}

#[tokio::test]
async fn every_event_shows_its_own_note() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    assert_eq!(
        event_notes(&fake, "SecretGenerated"),
        vec![
            "generated Secret sc-jwt".to_owned(),
            "generated Secret sc-redis-auth".to_owned()
        ]
    );
    let applied = event_notes(&fake, "Applied");
    assert_eq!(applied.len(), 1, "{applied:#?}");
    assert!(
        applied[0].starts_with("created Secret sc-config, "),
        "{applied:#?}"
    );

    // A replicas change: a second Applied event, with its own note.
    let mut stored = fake.get(SC_PATH).unwrap();
    stored["spec"]["replicas"] = json!(3);
    stored["metadata"]["generation"] = json!(2);
    fake.put(SC_PATH, stored);
    reconcile(&reread(&fake), &ctx).await.unwrap();
    let applied = event_notes(&fake, "Applied");
    assert_eq!(applied.len(), 2, "{applied:#?}");
    assert!(
        applied.contains(&"updated Deployment sc-server".to_owned()),
        "{applied:#?}"
    );
}

#[tokio::test]
async fn a_second_user_error_while_config_valid_stays_false_gets_its_own_warning() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let missing = |secret: &str| json!({"ice": {"turnUrls": ["turn:t.example.com:3478"], "turnSecretRef": {"name": secret}}});
    let sc = cluster(&fake, missing("first-missing"));
    reconcile(&sc, &ctx).await.unwrap();
    let mut stored = fake.get(SC_PATH).unwrap();
    stored["spec"] = missing("second-missing");
    stored["metadata"]["generation"] = json!(2);
    fake.put(SC_PATH, stored);
    let sc = reread(&fake);
    reconcile(&sc, &ctx).await.unwrap();
    let c = condition(&reread(&fake), "ConfigValid").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    let notes = event_notes(&fake, "SecretNotFound");
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes[0].contains("\"first-missing\""), "{notes:#?}");
    assert!(notes[1].contains("\"second-missing\""), "{notes:#?}");
    assert!(fake
        .events()
        .iter()
        .filter(|e| e["reason"] == "SecretNotFound")
        .all(|e| e["type"] == "Warning"));
    // The same error again: no event.
    reconcile(&reread(&fake), &ctx).await.unwrap();
    assert_eq!(event_notes(&fake, "SecretNotFound").len(), 2);
}

/// Waits (bounded) for the events published by error_policy's task.
async fn wait_for_events(fake: &FakeApi, reason: &str, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if event_notes(fake, reason).len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    event_notes(fake, reason)
}

#[tokio::test]
async fn a_transient_failure_emits_one_reconcile_failed_event_per_outage() {
    let fake = FakeApi::default();
    let ctx = Arc::new(context(&fake));
    let sc = Arc::new(cluster(&fake, json!({})));
    fake.fault(Method::PATCH, "/deployments/sc-server", 500, 3);
    for _ in 0..3 {
        let err = reconcile(&sc, &ctx).await.unwrap_err();
        crate::controller::error_policy(sc.clone(), &err, ctx.clone());
    }
    let notes = wait_for_events(&fake, "ReconcileFailed", 1).await;
    // Let any (wrong) further event tasks run before counting.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        event_notes(&fake, "ReconcileFailed"),
        vec!["reconcile failed: server_error (apply Deployment sc-server); retrying with backoff (the operator's log has the details)".to_owned()],
        "{notes:#?}"
    );
    assert!(fake
        .events()
        .iter()
        .filter(|e| e["reason"] == "ReconcileFailed")
        .all(|e| e["type"] == "Warning"));

    // A success ends the outage; the next failure starts a new one: a second event.
    reconcile(&sc, &ctx).await.unwrap();
    ctx.backoff
        .reset(&kube::runtime::reflector::ObjectRef::from_obj(sc.as_ref()));
    fake.fault(Method::PATCH, "/deployments/sc-server", 500, 1);
    let mut changed = fake.get(SC_PATH).unwrap();
    changed["spec"]["replicas"] = json!(4);
    fake.put(SC_PATH, changed);
    let sc = Arc::new(reread(&fake));
    let err = reconcile(&sc, &ctx).await.unwrap_err();
    crate::controller::error_policy(sc.clone(), &err, ctx.clone());
    assert_eq!(wait_for_events(&fake, "ReconcileFailed", 2).await.len(), 2);
}

#[tokio::test]
async fn every_write_names_the_operators_field_manager() {
    let fake = FakeApi::default();
    let ctx = context(&fake);
    let sc = cluster(&fake, json!({}));
    reconcile(&sc, &ctx).await.unwrap();
    let uris = fake.0.lock().unwrap().uris.clone();
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
