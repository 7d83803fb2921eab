//! Process metrics in one `prometheus-client` registry, rendered in the Prometheus text
//! format (0.0.4) for `/metrics` and as JSON for `/webrtc/webrtc-metrics`. Recording is an
//! atomic add (a read lock for labelled counters with values not named up front); what
//! every relayed message records is striped per worker thread ([`striped`]). Rendering
//! happens only on scrape. The Redis bus records into [`BusMetrics`], registered here so
//! one scrape shows both.

mod striped;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

use crate::bus::redis::metrics::BusMetrics;
use striped::{StripedCounter, StripedHistogram};

/// Counters keyed by the value of one label, drawn from a closed set of `&'static str`
/// (message types, error codes, close reasons). Unlike `Family`, the values can be read
/// back (the JSON view needs them), series come out sorted, and HELP/TYPE are exported
/// before the first series exists, as dashboards have always seen them.
#[derive(Debug, Clone)]
pub struct LabeledCounter {
    label: &'static str,
    /// Values named up front (message types), striped and found without a lock; each
    /// series appears once it has counted something, like the others.
    known: Arc<[(&'static str, StripedCounter)]>,
    series: Arc<RwLock<BTreeMap<&'static str, Counter>>>,
}

impl LabeledCounter {
    pub fn new(label: &'static str) -> Self {
        Self::with_values(label, &[])
    }

    /// A counter whose `values` are counted on the per-message path.
    pub fn with_values(label: &'static str, values: &[&'static str]) -> Self {
        LabeledCounter {
            label,
            known: values
                .iter()
                .map(|v| (*v, StripedCounter::default()))
                .collect(),
            series: Arc::default(),
        }
    }

    pub fn inc(&self, value: &'static str) {
        if let Some((_, counter)) = self.known.iter().find(|(v, _)| *v == value) {
            counter.inc();
            return;
        }
        // The common case, a value seen before, only takes the read lock.
        if let Some(counter) = self.read().get(value) {
            counter.inc();
            return;
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        series.entry(value).or_default().inc();
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let mut all: BTreeMap<&'static str, u64> =
            self.read().iter().map(|(v, c)| (*v, c.get())).collect();
        for (value, counter) in self.known.iter() {
            let n = counter.get();
            if n > 0 {
                all.insert(value, n);
            }
        }
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, Counter>> {
        // Counters only ever grow: a panic elsewhere cannot leave the map inconsistent.
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl TypedMetric for LabeledCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LabeledCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, n) in self.snapshot() {
            encoder
                .encode_family(&[(self.label, value)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

static FANOUT_BUCKETS: [f64; 8] = [0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0];
static SIZE_BUCKETS: [f64; 7] = [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0];
const SECONDS_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Every metric the server records, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_total: Counter,
    rooms: Gauge,
    participants: Gauge,
    bus_ready: Gauge,
    draining: Gauge,
    messages_received: StripedCounter,
    presence_dropped: Counter,
    presence_resyncs: Counter,
    relayed: LabeledCounter,
    errors: LabeledCounter,
    closes: LabeledCounter,
    fanout: StripedHistogram,
    message_bytes: StripedHistogram,
    join_seconds: Histogram,
    resumes: LabeledCounter,
    replayed: Counter,
    duplicates: Counter,
    inbox_overflows: Counter,
    held: Gauge,
    inbox_messages: Gauge,
    bus: BusMetrics,
    webhooks: crate::webhook::metrics::WebhookMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Values that live elsewhere (hub, bus, shutdown) and are read at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub rooms: usize,
    pub participants: usize,
    pub bus_ready: bool,
    pub draining: bool,
    /// Participants whose connection was lost, held for a resume.
    pub held: usize,
    /// Messages kept in the inboxes of local participants.
    pub inbox_messages: usize,
}

/// Registers `metric` as `name` with `help` and hands back the handle that records into it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        // Help texts get their final "." from the registry. Counters are registered without
        // `_total`, which the encoder appends (`connections` -> `switchboard_connections_total`).
        let connections = register(
            &mut registry,
            "connections",
            "Open WebSocket connections (participants) on this instance",
            Gauge::default(),
        );
        let connections_total = register(
            &mut registry,
            "connections",
            "WebSocket connections accepted as participants",
            Counter::default(),
        );
        let rooms = register(
            &mut registry,
            "rooms",
            "Rooms with at least one participant on this instance",
            Gauge::default(),
        );
        let participants = register(
            &mut registry,
            "participants",
            "Participants connected to this instance",
            Gauge::default(),
        );
        let bus_ready = register(
            &mut registry,
            "bus_ready",
            "1 when the bus can carry messages",
            Gauge::default(),
        );
        let draining = register(
            &mut registry,
            "draining",
            "1 while the instance is shutting down",
            Gauge::default(),
        );
        let messages_received = register(
            &mut registry,
            "messages_received",
            "Client messages received",
            StripedCounter::default(),
        );
        let presence_dropped = register(
            &mut registry,
            "presence_dropped",
            "Presence updates dropped for slow readers",
            Counter::default(),
        );
        let presence_resyncs = register(
            &mut registry,
            "presence_resyncs",
            "Fresh room-state messages sent to readers that had missed presence updates",
            Counter::default(),
        );
        let relayed = register(
            &mut registry,
            "messages_relayed",
            "Client messages relayed, by message type",
            LabeledCounter::with_values(
                "type",
                &crate::protocol::RelayKind::ALL.map(crate::protocol::RelayKind::as_str),
            ),
        );
        let errors = register(
            &mut registry,
            "errors",
            "Error messages sent to clients, by error code",
            LabeledCounter::new("code"),
        );
        let closes = register(
            &mut registry,
            "closes",
            "Connections closed or refused, by reason",
            LabeledCounter::new("reason"),
        );
        let fanout = register(
            &mut registry,
            "relay_local_recipients",
            "Local recipients per relayed message",
            StripedHistogram::new(&FANOUT_BUCKETS),
        );
        let message_bytes = register(
            &mut registry,
            "message_size_bytes",
            "Size of client messages",
            StripedHistogram::new(&SIZE_BUCKETS),
        );
        let join_seconds = register(
            &mut registry,
            "join_duration_seconds",
            "Time from upgrade to room-state",
            Histogram::new(SECONDS_BUCKETS),
        );
        let resumes = register(
            &mut registry,
            "resumes",
            "Resume attempts, by outcome (ok, resume_expired, resume_invalid, resume_overflow)",
            LabeledCounter::new("outcome"),
        );
        let replayed = register(
            &mut registry,
            "messages_replayed",
            "Missed messages delivered to resumed connections",
            Counter::default(),
        );
        let duplicates = register(
            &mut registry,
            "duplicates_dropped",
            "Re-sent client messages (same sender and seq) not delivered again",
            Counter::default(),
        );
        let inbox_overflows = register(
            &mut registry,
            "inbox_overflows",
            "Messages let go from the full inbox of a participant waiting for a resume (Redis bus: the missed ones a refused resume found gone)",
            Counter::default(),
        );
        let held = register(
            &mut registry,
            "participants_held",
            "Participants whose connection was lost, held for a resume",
            Gauge::default(),
        );
        let inbox_messages = register(
            &mut registry,
            "inbox_messages",
            "Messages kept in the inboxes of local participants for a resume",
            Gauge::default(),
        );
        // Exported with every bus (zero without Redis), so the set of series does not
        // depend on the deployment.
        let bus = BusMetrics::default();
        bus.register(&mut registry);
        let webhooks = crate::webhook::metrics::WebhookMetrics::default();
        webhooks.register(&mut registry);
        Metrics {
            registry,
            connections,
            connections_total,
            rooms,
            participants,
            bus_ready,
            draining,
            messages_received,
            presence_dropped,
            presence_resyncs,
            relayed,
            errors,
            closes,
            fanout,
            message_bytes,
            join_seconds,
            resumes,
            replayed,
            duplicates,
            inbox_overflows,
            held,
            inbox_messages,
            bus,
            webhooks,
        }
    }

    /// A resume attempt ended: `ok` or the refusal's reason.
    pub fn resume(&self, outcome: &'static str) {
        self.resumes.inc(outcome);
    }

    pub fn replayed(&self, messages: usize) {
        self.replayed.inc_by(messages as u64);
    }

    pub fn duplicate_dropped(&self) {
        self.duplicates.inc();
    }

    pub fn inbox_overflowed(&self, messages: usize) {
        self.inbox_overflows.inc_by(messages as u64);
    }

    /// What the Redis bus records into (a handle on the same registry).
    pub fn bus(&self) -> BusMetrics {
        self.bus.clone()
    }

    /// What webhook delivery records into (a handle on the same registry).
    pub fn webhooks(&self) -> crate::webhook::metrics::WebhookMetrics {
        self.webhooks.clone()
    }

    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections.inc();
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections.dec();
        self.closes.inc(reason);
    }

    /// A connection refused before it became a participant (auth, room full, ...).
    pub fn refused(&self, reason: &'static str) {
        self.closes.inc(reason);
    }

    pub fn message_received(&self, bytes: usize) {
        self.messages_received.inc();
        self.message_bytes.observe(bytes as u64);
    }

    pub fn relayed(&self, kind: &'static str, local_recipients: usize) {
        self.relayed.inc(kind);
        self.fanout.observe(local_recipients as u64);
    }

    pub fn error(&self, code: &'static str) {
        self.errors.inc(code);
    }

    pub fn presence_dropped(&self) {
        self.presence_dropped.inc();
    }

    /// A fresh `room-state` was queued for a reader that had missed presence.
    pub fn presence_resynced(&self) {
        self.presence_resyncs.inc();
    }

    pub fn join_duration(&self, seconds: f64) {
        self.join_seconds.observe(seconds);
    }

    pub fn active_connections(&self) -> i64 {
        self.connections.get()
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self, g: Gauges) -> String {
        // Concurrent scrapes may both set these; each writes what it just read.
        self.rooms.set(saturating_i64(g.rooms));
        self.participants.set(saturating_i64(g.participants));
        self.bus_ready.set(i64::from(g.bus_ready));
        self.draining.set(i64::from(g.draining));
        self.held.set(saturating_i64(g.held));
        self.inbox_messages.set(saturating_i64(g.inbox_messages));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The same numbers as JSON for `/webrtc/webrtc-metrics`.
    pub fn to_json(&self, g: Gauges) -> serde_json::Value {
        serde_json::json!({
            "connections": self.active_connections(),
            "connections_total": self.connections_total.get(),
            "rooms": g.rooms,
            "participants": g.participants,
            "bus_ready": g.bus_ready,
            "draining": g.draining,
            "messages_received_total": self.messages_received.get(),
            "presence_dropped_total": self.presence_dropped.get(),
            "presence_resyncs_total": self.presence_resyncs.get(),
            "messages_relayed_total": self.relayed.snapshot(),
            "errors_total": self.errors.snapshot(),
            "closes_total": self.closes.snapshot(),
        })
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.connection_opened();
        m.relayed("offer", 2);
        m.relayed("offer", 1);
        m.error("unknown_type");
        m.connection_closed("slow_consumer");
        let text = m.render_prometheus(Gauges {
            rooms: 1,
            participants: 0,
            bus_ready: true,
            draining: false,
            ..Gauges::default()
        });
        for line in [
            "switchboard_messages_relayed_total{type=\"offer\"} 2",
            "switchboard_errors_total{code=\"unknown_type\"} 1",
            "switchboard_closes_total{reason=\"slow_consumer\"} 1",
            "switchboard_connections 0",
            "switchboard_connections_total 1",
            "switchboard_rooms 1",
            "switchboard_bus_ready 1",
            "switchboard_relay_local_recipients_bucket{le=\"0\"} 0",
            "switchboard_relay_local_recipients_bucket{le=\"1\"} 1",
            "switchboard_relay_local_recipients_bucket{le=\"2\"} 2",
            "switchboard_relay_local_recipients_bucket{le=\"+Inf\"} 2",
            "switchboard_relay_local_recipients_count 2",
            "switchboard_relay_local_recipients_sum 3.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn labelled_counters_export_help_and_type_before_the_first_series() {
        let text = Metrics::default().render_prometheus(Gauges::default());
        let at = text
            .find("# HELP switchboard_errors_total Error messages sent to clients, by error code.\n# TYPE switchboard_errors_total counter\n# HELP ")
            .map(|_| ());
        assert_eq!(at, Some(()), "{text}");
    }

    #[test]
    fn json_reads_the_same_counters() {
        let m = Metrics::default();
        m.connection_opened();
        m.message_received(10);
        m.relayed("offer", 1);
        m.relayed("answer", 1);
        m.relayed("offer", 1);
        m.refused("room_full");
        m.presence_dropped();
        m.presence_resynced();
        let json = m.to_json(Gauges {
            rooms: 3,
            participants: 4,
            bus_ready: true,
            draining: true,
            ..Gauges::default()
        });
        assert_eq!(
            json,
            serde_json::json!({
                "connections": 1,
                "connections_total": 1,
                "rooms": 3,
                "participants": 4,
                "bus_ready": true,
                "draining": true,
                "messages_received_total": 1,
                "presence_dropped_total": 1,
                "presence_resyncs_total": 1,
                "messages_relayed_total": {"answer": 1, "offer": 2},
                "errors_total": {},
                "closes_total": {"room_full": 1},
            })
        );
    }
}
