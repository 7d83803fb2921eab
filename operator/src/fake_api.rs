//! An in-memory API server behind a real `kube::Client`, for the reconcile and controller
//! scenarios: objects
//! stored by path, injectable faults, and a log of every call in the words a scenario uses
//! (`get`, `create`, `apply`, `delete`, `event`), checked in order by [`Expect`] (one
//! chainable step per expected call, as controller-rs's `ApiServerVerifier` does).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use kube::runtime::events::Reporter;
use kube::Client;
use serde_json::{json, Value};

use crate::api::SignalingCluster;
use crate::backoff::Backoff;
use crate::context::{ApiSupport, Context};
use crate::metrics::Metrics;
use crate::names::FIELD_MANAGER;

pub const NS: &str = "ns";
pub const SC_PATH: &str = "/apis/switchboard.dev/v1alpha1/namespaces/ns/signalingclusters/sc";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

pub fn secret(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}
pub fn statefulset(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
}
pub fn deployment(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}
pub fn service(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/services/{name}")
}
pub fn network_policy(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{name}")
}
pub fn ingress(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/{name}")
}

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
    /// Every call, as a scenario step would state it (see [`describe`]).
    calls: Vec<String>,
    /// Every request as "METHOD path?query".
    uris: Vec<String>,
    faults: Vec<Fault>,
}

#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Deep merge used for merge patches and for applies to children: objects merge key by key,
/// null deletes, everything else replaces.
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

/// One request in a scenario's words. GET: `get P` (200) or `get P (missing)` (404); POST:
/// `event REASON` for Events, else `create P/NAME`; PATCH: `apply P` for a forced server-side
/// apply under the operator's field manager (anything else is spelled out so it mismatches);
/// DELETE: `delete P`. Any other failure appends ` -> CODE`.
fn describe(
    method: &Method,
    path: &str,
    query: &str,
    content_type: &str,
    body: &Value,
    code: u16,
) -> String {
    let base = match *method {
        Method::GET if code == 404 => return format!("get {path} (missing)"),
        Method::GET => format!("get {path}"),
        Method::POST if path == EVENTS_PATH => {
            format!("event {}", body["reason"].as_str().unwrap_or("<no reason>"))
        }
        Method::POST => format!(
            "create {path}/{}",
            body["metadata"]["name"].as_str().unwrap_or("<no name>")
        ),
        Method::PATCH => {
            let forced_apply = content_type == "application/apply-patch+yaml"
                && query.split('&').any(|q| q == "force=true")
                && query
                    .split('&')
                    .any(|q| q == format!("fieldManager={FIELD_MANAGER}"));
            if forced_apply {
                format!("apply {path}")
            } else {
                format!("patch {path} ({content_type}, {query})")
            }
        }
        Method::DELETE => format!("delete {path}"),
        _ => format!("{method} {path}"),
    };
    if code >= 400 {
        format!("{base} -> {code}")
    } else {
        base
    }
}

impl FakeApi {
    pub fn put(&self, path: &str, obj: Value) {
        let mut s = self.0.lock().unwrap();
        s.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        s.objects.insert(path.to_owned(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    pub fn fault(&self, method: Method, path: &str, status: u16, times: usize) {
        self.0.lock().unwrap().faults.push(Fault {
            method,
            path: path.to_owned(),
            status,
            times,
        });
    }

    /// The calls so far, oldest first.
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }

    /// Every request as "METHOD path?query".
    pub fn uris(&self) -> Vec<String> {
        self.0.lock().unwrap().uris.clone()
    }

    /// Forgets the calls so far (a scenario checks what happens next).
    pub fn clear_calls(&self) {
        self.0.lock().unwrap().calls.clear();
    }

    /// The calls expected from now on, one step each; see [`Expect::done`].
    pub fn expect(&self) -> Expect {
        Expect {
            fake: self.clone(),
            steps: Vec::new(),
        }
    }

    pub fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Notes of the stored events with this reason, sorted.
    pub fn event_notes(&self, reason: &str) -> Vec<String> {
        let mut notes: Vec<String> = self
            .events()
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        notes.sort();
        notes
    }

    /// Waits (bounded: 2 s) until `n` events with this reason are stored (events published
    /// from a task); returns their notes.
    pub async fn wait_for_events(&self, reason: &str, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.event_notes(reason).len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.event_notes(reason)
    }

    fn handle(
        &self,
        method: &Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> (u16, Value) {
        let mut s = self.0.lock().unwrap();
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
        match *method {
            Method::GET => match s.objects.get(path) {
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
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                obj["metadata"]["uid"] = json!(format!("uid-{}", s.rv));
                s.objects.insert(item, obj.clone());
                (201, obj)
            }
            Method::PATCH => {
                let (item, sub) = match path.strip_suffix("/status") {
                    Some(p) if p.contains("/signalingclusters/") => (p.to_owned(), true),
                    _ => (path.to_owned(), false),
                };
                let current = s.objects.get(&item).cloned();
                if current.is_none() && sub {
                    return (404, status_body(404, "NotFound", "not found"));
                }
                let apply = content_type == "application/apply-patch+yaml";
                // Like the API server: an apply names the object's type.
                if apply
                    && (body["apiVersion"].as_str().is_none() || body["kind"].as_str().is_none())
                {
                    return (
                        400,
                        status_body(400, "BadRequest", "apiVersion and kind are required"),
                    );
                }
                let mut obj = current.clone().unwrap_or_else(|| json!({"metadata": {}}));
                if sub && apply {
                    // The operator is the only manager of status: what its apply leaves out
                    // is removed, as the API server does for fields no other manager owns.
                    obj["status"] = body["status"].clone();
                } else if sub {
                    merge(&mut obj, &json!({"status": body["status"]}));
                } else {
                    merge(&mut obj, body);
                }
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
            Method::DELETE => match s.objects.remove(path) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                ),
                None => (404, status_body(404, "NotFound", "not found")),
            },
            _ => (405, status_body(405, "MethodNotAllowed", "")),
        }
    }

    pub fn client(&self) -> Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let query = parts.uri.query().unwrap_or("").to_owned();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let (code, value) = fake.handle(&parts.method, &path, &content_type, &body);
                {
                    let mut s = fake.0.lock().unwrap();
                    s.uris.push(format!("{} {path}?{query}", parts.method));
                    let call = describe(&parts.method, &path, &query, &content_type, &body, code);
                    s.calls.push(call);
                }
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

    /// A reconcile context talking to this fake (no autoscaling/v2, no policy/v1).
    pub fn context(&self) -> Context {
        Context {
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some("test".into()),
            },
            client: self.client(),
            metrics: Arc::new(Metrics::new()),
            backoff: Backoff::default(),
            support: ApiSupport::default(),
        }
    }

    /// Stores the cluster `sc` (generation 1) and returns it as read back.
    pub fn cluster(&self, spec: Value) -> SignalingCluster {
        self.put(
            SC_PATH,
            json!({
                "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
                "metadata": {"name": "sc", "namespace": NS, "uid": "sc-uid", "generation": 1},
                "spec": spec
            }),
        );
        self.reread()
    }

    /// Replaces the stored cluster's spec, bumping its generation (as a user's edit does);
    /// returns it as read back.
    pub fn edit_spec(&self, spec: Value) -> SignalingCluster {
        let mut stored = self.get(SC_PATH).unwrap();
        let generation = stored["metadata"]["generation"].as_i64().unwrap_or(0);
        stored["spec"] = spec;
        stored["metadata"]["generation"] = json!(generation + 1);
        self.put(SC_PATH, stored);
        self.reread()
    }

    pub fn reread(&self) -> SignalingCluster {
        serde_json::from_value(self.get(SC_PATH).unwrap()).unwrap()
    }
}

/// The calls a scenario expects, in order; built step by step, checked by [`Expect::done`].
#[must_use = "a scenario is checked by .done()"]
pub struct Expect {
    fake: FakeApi,
    steps: Vec<String>,
}

impl Expect {
    fn step(mut self, s: String) -> Self {
        self.steps.push(s);
        self
    }
    /// Appends a part of a scenario (a function adding steps).
    pub fn then(self, part: impl FnOnce(Self) -> Self) -> Self {
        part(self)
    }
    /// A read that finds the object.
    pub fn get(self, path: &str) -> Self {
        self.step(format!("get {path}"))
    }
    /// A read that finds nothing (404).
    pub fn get_missing(self, path: &str) -> Self {
        self.step(format!("get {path} (missing)"))
    }
    /// A create of the object at `path` (a POST to its collection naming it).
    pub fn create(self, path: &str) -> Self {
        self.step(format!("create {path}"))
    }
    /// A forced server-side apply under the operator's field manager.
    pub fn apply(self, path: &str) -> Self {
        self.step(format!("apply {path}"))
    }
    /// A forced server-side apply of the cluster's status.
    pub fn apply_status(self) -> Self {
        self.step(format!("apply {SC_PATH}/status"))
    }
    pub fn delete(self, path: &str) -> Self {
        self.step(format!("delete {path}"))
    }
    /// An Event with this reason.
    pub fn event(self, reason: &str) -> Self {
        self.step(format!("event {reason}"))
    }
    /// The previous call fails with `code` (an injected fault or a conflict).
    pub fn fails(mut self, code: u16) -> Self {
        let last = self.steps.pop().expect("fails() follows a step");
        self.step(format!("{last} -> {code}"))
    }
    /// Asserts the calls since the last check are exactly the steps, in order, and forgets
    /// them (so the next scenario starts from here).
    pub fn done(self) {
        let calls = self.fake.calls();
        self.fake.clear_calls();
        if let Some(i) =
            (0..calls.len().max(self.steps.len())).find(|&i| calls.get(i) != self.steps.get(i))
        {
            panic!(
                "call #{i}: expected {:?}, got {:?}\nexpected calls:\n  {}\nactual calls:\n  {}",
                self.steps.get(i),
                calls.get(i),
                self.steps.join("\n  "),
                calls.join("\n  ")
            );
        }
    }
}
