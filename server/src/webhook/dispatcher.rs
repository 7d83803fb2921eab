//! The delivery loop. One worker per room and endpoint holds the room's oldest undelivered
//! event for that endpoint, sends it until a 2xx (or a 410, or the retry horizon), then
//! acknowledges it and takes the next: a room's events reach an endpoint in order, rooms and
//! endpoints never wait for each other. Workers start when the bus records events here
//! ([`Wakes`]) and from a periodic scan of the log, which also finds rooms whose events
//! another (possibly dead) instance recorded, and sets the queue metrics.
//!
//! State: the set of running workers (`active`, a std `Mutex` held for a few map operations,
//! never across an `.await`) and each endpoint's health (likewise).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::http::Uri;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::client::Client;
use super::metrics::WebhookMetrics;
use super::retry::{verdict, Backoff, EndpointHealth, HealthChange, Verdict};
use super::{Claim, EventFilter, EventLog, RecordedEvent, SigningSecret, Wakes};
use crate::room::RoomId;

/// One endpoint as the dispatcher uses it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// For metrics and logs (never the URL, which may carry a token).
    pub name: String,
    pub url: Uri,
    pub secret: SigningSecret,
    pub filter: EventFilter,
    /// Its consumer group in the log ([`super::endpoint_group`]).
    pub group: String,
}

/// How the dispatcher runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<Endpoint>,
    pub timeout: Duration,
    pub backoff: Backoff,
    /// How long after it happened an event is given up.
    pub horizon: Duration,
    /// Requests in flight per endpoint on this instance.
    pub max_in_flight: usize,
    /// How often the log is scanned for rooms with events.
    pub scan_interval: Duration,
    /// How often a held event is renewed (well within the log's lease).
    pub renew_interval: Duration,
}

struct EndpointState {
    cfg: Endpoint,
    health: Mutex<EndpointHealth>,
    permits: Semaphore,
}

/// A running worker; `again` is set when new events were recorded while it ran, so it looks
/// once more before it ends.
#[derive(Default)]
struct Worker {
    again: bool,
}

struct Shared {
    settings: Settings,
    endpoints: Vec<EndpointState>,
    log: Arc<dyn EventLog>,
    client: Client,
    metrics: WebhookMetrics,
    active: Mutex<HashMap<(RoomId, usize), Worker>>,
}

/// The running dispatcher; dropping it stops delivery (workers included).
pub struct Dispatcher {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dispatcher {
    /// Starts delivering what `log` holds; `wakes` says which rooms just got events.
    pub fn start(
        settings: Settings,
        log: Arc<dyn EventLog>,
        wakes: Arc<Wakes>,
        metrics: WebhookMetrics,
        instance: &str,
    ) -> Self {
        let endpoints = settings
            .endpoints
            .iter()
            .map(|cfg| {
                metrics.endpoint(&cfg.name);
                EndpointState {
                    cfg: cfg.clone(),
                    health: Mutex::default(),
                    permits: Semaphore::new(settings.max_in_flight.max(1)),
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            client: Client::new(settings.timeout),
            settings,
            endpoints,
            log,
            metrics,
            active: Mutex::default(),
        });
        let span = tracing::info_span!(parent: None, "webhooks", instance = %instance);
        let task = tokio::spawn(run(shared.clone(), wakes).instrument(span));
        Dispatcher { task, shared }
    }

    /// Workers running now (for tests and the health view).
    pub fn workers(&self) -> usize {
        self.shared.active().len()
    }
}

async fn run(shared: Arc<Shared>, wakes: Arc<Wakes>) {
    let mut scan = tokio::time::interval(shared.settings.scan_interval);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rooms whose registration in the log failed: retried at every scan.
    let mut unregistered: HashSet<RoomId> = HashSet::new();
    loop {
        tokio::select! {
            rooms = wakes.next() => {
                for room in rooms {
                    if shared.log.register(&room).await.is_err() {
                        unregistered.insert(room.clone());
                    }
                    shared.start_workers(&room, |_| true);
                }
            }
            _ = scan.tick() => {
                let retry: Vec<RoomId> = unregistered.drain().collect();
                for room in retry {
                    if shared.log.register(&room).await.is_err() {
                        unregistered.insert(room);
                    }
                }
                if let Err(e) = shared.scan().await {
                    tracing::debug!(error = &e as &dyn std::error::Error, "webhook scan failed; retrying");
                }
            }
        }
    }
}

impl Shared {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<(RoomId, usize), Worker>> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn groups(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.cfg.group.clone()).collect()
    }

    /// Starts a worker for each endpoint `want`s that has none in `room` yet (and tells the
    /// running ones to look again).
    fn start_workers(self: &Arc<Self>, room: &RoomId, want: impl Fn(usize) -> bool) {
        for i in (0..self.endpoints.len()).filter(|i| want(*i)) {
            let mut active = self.active();
            if let Some(worker) = active.get_mut(&(room.clone(), i)) {
                worker.again = true;
                continue;
            }
            active.insert((room.clone(), i), Worker::default());
            drop(active);
            let shared = self.clone();
            let room = room.clone();
            let span = tracing::info_span!("webhook", room = %room, endpoint = %self.endpoints[i].cfg.name);
            tokio::spawn(async move { shared.work(room, i).await }.instrument(span));
        }
    }

    /// Every room with events: queue metrics, workers for what nobody delivers, and rooms that
    /// are done forgotten.
    async fn scan(self: &Arc<Self>) -> Result<(), crate::bus::BusError> {
        let groups = self.groups();
        let rooms = self.log.pending_rooms().await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut depth = vec![0u64; groups.len()];
        let mut oldest: Vec<Option<i64>> = vec![None; groups.len()];
        for room in rooms {
            let status = self.log.status(&room, &groups).await?;
            for (i, s) in status.iter().enumerate() {
                depth[i] += s.depth;
                oldest[i] = match (oldest[i], s.oldest_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            if status.iter().all(|s| s.depth == 0) {
                self.log.settle(&room).await?;
                continue;
            }
            self.start_workers(&room, |i| {
                status
                    .get(i)
                    .is_some_and(|s| s.depth > 0 && !s.held_elsewhere)
            });
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let age = oldest[i].map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            self.metrics.queue(&e.cfg.name, depth[i], age);
        }
        Ok(())
    }

    /// One worker: the room's events for endpoint `i`, one after the other, until none is
    /// left (or another instance holds them).
    async fn work(self: Arc<Self>, room: RoomId, i: usize) {
        loop {
            self.drain(&room, i).await;
            let mut active = self.active();
            let key = (room.clone(), i);
            match active.get_mut(&key) {
                Some(worker) if worker.again => worker.again = false,
                _ => {
                    active.remove(&key);
                    return;
                }
            }
        }
    }

    async fn drain(&self, room: &RoomId, i: usize) {
        let endpoint = &self.endpoints[i];
        let group = endpoint.cfg.group.as_str();
        // Another instance holding the room usually finishes soon (it was sending the event
        // before ours): look again a few times, doubling the wait up to a scan period, so our
        // event does not wait for the next scan.
        let mut busy_wait = Duration::from_millis(100);
        loop {
            let (entry, event) = match self.log.claim(room, group).await {
                Ok(Claim::Event { entry, event }) => (entry, event),
                Ok(Claim::Busy) if busy_wait < self.settings.scan_interval => {
                    tokio::time::sleep(busy_wait).await;
                    busy_wait *= 2;
                    continue;
                }
                Ok(Claim::Busy | Claim::Empty) => return,
                Err(e) => {
                    tracing::debug!(
                        error = &e as &dyn std::error::Error,
                        "webhook claim failed; the next scan retries"
                    );
                    return;
                }
            };
            if endpoint.cfg.filter.contains(event.kind) {
                let held = self
                    .hold(room, group, &entry, self.deliver(endpoint, &event))
                    .await;
                if held.is_none() {
                    tracing::info!(event = %event.id, "another instance took over this room's webhooks");
                    return;
                }
            }
            if let Err(e) = self.log.ack(room, group, &entry).await {
                // Sent but not acknowledged: the next claim hands it out again (at least once).
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "webhook ack failed; the next scan retries"
                );
                return;
            }
        }
    }

    /// Runs `fut` while renewing the hold on `entry`; `None` when another instance took it.
    async fn hold<F: Future>(
        &self,
        room: &RoomId,
        group: &str,
        entry: &str,
        fut: F,
    ) -> Option<F::Output> {
        let renew = async {
            let mut tick = tokio::time::interval(self.settings.renew_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A failure to reach the store keeps going: the lease may still hold.
                if let Ok(false) = self.log.renew(room, group, entry).await {
                    return;
                }
            }
        };
        tokio::select! {
            out = fut => Some(out),
            () = renew => None,
        }
    }

    /// Sends `event` until it is delivered, refused for good or past the horizon.
    async fn deliver(&self, endpoint: &EndpointState, event: &RecordedEvent) {
        let name = endpoint.cfg.name.as_str();
        let body = event.body();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let age = Duration::from_millis(
            u64::try_from(now_ms - event.time_ms().unwrap_or(now_ms)).unwrap_or(0),
        );
        let give_up_at = Instant::now() + self.settings.horizon.saturating_sub(age);
        let mut failed: u32 = 0;
        loop {
            let outcome = {
                let _permit = endpoint.permits.acquire().await;
                let timestamp = chrono::Utc::now().timestamp();
                let signature = endpoint.cfg.secret.sign(&event.id, timestamp, &body);
                let headers = [
                    ("webhook-id", event.id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ];
                self.client
                    .post(&endpoint.cfg.url, &headers, body.clone())
                    .await
            };
            let (label, retry_after, detail) = match &outcome {
                Ok(answer) => match verdict(answer.status, answer.retry_after.as_deref()) {
                    Verdict::Delivered => {
                        self.metrics.attempt(name, "delivered");
                        self.health(endpoint, true, "");
                        return;
                    }
                    Verdict::Gone => {
                        self.metrics.attempt(name, "rejected");
                        self.metrics.given_up(name, "gone");
                        tracing::warn!(event = %event.id, "webhook endpoint answered 410 Gone; event dropped");
                        return;
                    }
                    Verdict::Retry { retry_after } => {
                        ("rejected", retry_after, format!("status {}", answer.status))
                    }
                },
                Err(e) => (e.metric_label(), None, e.to_string()),
            };
            self.metrics.attempt(name, label);
            self.health(endpoint, false, &detail);
            failed = failed.saturating_add(1);
            let jitter = rand::rng().random::<f64>();
            let next = self.settings.backoff.next_attempt(
                Instant::now(),
                failed,
                jitter,
                retry_after,
                give_up_at,
            );
            let Some(at) = next else {
                self.metrics.given_up(name, "exhausted");
                tracing::warn!(event = %event.id, attempts = failed, "webhook retries exhausted (retry horizon reached); event dropped");
                return;
            };
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Records an attempt in the endpoint's health and logs its start of failing and recovery.
    fn health(&self, endpoint: &EndpointState, ok: bool, detail: &str) {
        let now = Instant::now();
        let change = {
            let mut h = endpoint.health.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                h.succeeded(now)
            } else {
                h.failed(now)
            }
        };
        match change {
            HealthChange::Steady => {}
            HealthChange::StartedFailing => tracing::warn!(
                endpoint = %endpoint.cfg.name,
                error = %detail,
                "webhook endpoint failing; retrying with backoff"
            ),
            HealthChange::Recovered { down_for, failures } => tracing::info!(
                endpoint = %endpoint.cfg.name,
                down_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
                failed_attempts = failures,
                "webhook endpoint recovered"
            ),
        }
    }
}
