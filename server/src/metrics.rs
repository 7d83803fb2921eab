//! Process metrics kept in atomics and small maps, rendered in the
//! Prometheus text exposition format and as JSON for `/webrtc/stats`.
//! Recording is cheap and lock-light; rendering happens only on scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A fixed-bucket histogram (cumulative buckets are computed when rendering).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        // The sum is kept in millionths so it fits an atomic integer.
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Debug, Default)]
struct LabeledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabeledCounter {
    fn inc(&self, label: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, v) in self.snapshot() {
            let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
        }
    }
}

const FANOUT_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0];
const SIZE_BUCKETS: &[f64] = &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0];
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Every metric the server records.
#[derive(Debug)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicI64,
    messages_received: AtomicU64,
    presence_dropped: AtomicU64,
    presence_resyncs: AtomicU64,
    relayed: LabeledCounter,
    errors: LabeledCounter,
    closes: LabeledCounter,
    fanout: Histogram,
    message_bytes: Histogram,
    join_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            messages_received: AtomicU64::new(0),
            presence_dropped: AtomicU64::new(0),
            presence_resyncs: AtomicU64::new(0),
            relayed: LabeledCounter::default(),
            errors: LabeledCounter::default(),
            closes: LabeledCounter::default(),
            fanout: Histogram::new(FANOUT_BUCKETS),
            message_bytes: Histogram::new(SIZE_BUCKETS),
            join_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// Values that live elsewhere (hub, bus, shutdown) and are read at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub rooms: usize,
    pub participants: usize,
    pub bus_ready: bool,
    pub draining: bool,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
        self.closes.inc(reason);
    }

    /// A connection refused before it became a participant (auth, room full, ...).
    pub fn refused(&self, reason: &'static str) {
        self.closes.inc(reason);
    }

    pub fn message_received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.message_bytes.observe(bytes as f64);
    }

    pub fn relayed(&self, kind: &'static str, local_recipients: usize) {
        self.relayed.inc(kind);
        self.fanout.observe(local_recipients as f64);
    }

    pub fn error(&self, code: &'static str) {
        self.errors.inc(code);
    }

    pub fn presence_dropped(&self) {
        self.presence_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh `room-state` was queued for a reader that had missed presence.
    pub fn presence_resynced(&self) {
        self.presence_resyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn join_duration(&self, seconds: f64) {
        self.join_seconds.observe(seconds);
    }

    pub fn active_connections(&self) -> i64 {
        self.connections_active.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self, g: Gauges) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "switchboard_connections",
            "Open WebSocket connections (participants) on this instance.",
            self.active_connections(),
        );
        counter(
            &mut out,
            "switchboard_connections_total",
            "WebSocket connections accepted as participants.",
            self.connections_total.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "switchboard_rooms",
            "Rooms with at least one participant on this instance.",
            g.rooms as i64,
        );
        gauge(
            &mut out,
            "switchboard_participants",
            "Participants connected to this instance.",
            g.participants as i64,
        );
        gauge(
            &mut out,
            "switchboard_bus_ready",
            "1 when the bus can carry messages.",
            i64::from(g.bus_ready),
        );
        gauge(
            &mut out,
            "switchboard_draining",
            "1 while the instance is shutting down.",
            i64::from(g.draining),
        );
        counter(
            &mut out,
            "switchboard_messages_received_total",
            "Client messages received.",
            self.messages_received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_presence_dropped_total",
            "Presence updates dropped for slow readers.",
            self.presence_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_presence_resyncs_total",
            "Fresh room-state messages sent to readers that had missed presence updates.",
            self.presence_resyncs.load(Ordering::Relaxed),
        );
        self.relayed.render(
            &mut out,
            "switchboard_messages_relayed_total",
            "type",
            "Client messages relayed, by message type.",
        );
        self.errors.render(
            &mut out,
            "switchboard_errors_total",
            "code",
            "Error messages sent to clients, by error code.",
        );
        self.closes.render(
            &mut out,
            "switchboard_closes_total",
            "reason",
            "Connections closed or refused, by reason.",
        );
        self.fanout.render(
            &mut out,
            "switchboard_relay_local_recipients",
            "Local recipients per relayed message.",
        );
        self.message_bytes.render(
            &mut out,
            "switchboard_message_size_bytes",
            "Size of client messages.",
        );
        self.join_seconds.render(
            &mut out,
            "switchboard_join_duration_seconds",
            "Time from upgrade to room-state.",
        );
        // Redis bus: publish latency, reconnects, presence cleanups (zero without Redis).
        crate::bus::redis::metrics::render(&mut out);
        out
    }

    /// The same numbers as JSON for `/webrtc/webrtc-metrics`.
    pub fn to_json(&self, g: Gauges) -> serde_json::Value {
        serde_json::json!({
            "connections": self.active_connections(),
            "connections_total": self.connections_total.load(Ordering::Relaxed),
            "rooms": g.rooms,
            "participants": g.participants,
            "bus_ready": g.bus_ready,
            "draining": g.draining,
            "messages_received_total": self.messages_received.load(Ordering::Relaxed),
            "presence_dropped_total": self.presence_dropped.load(Ordering::Relaxed),
            "presence_resyncs_total": self.presence_resyncs.load(Ordering::Relaxed),
            "messages_relayed_total": self.relayed.snapshot(),
            "errors_total": self.errors.snapshot(),
            "closes_total": self.closes.snapshot(),
        })
    }
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
        });
        assert!(text.contains("switchboard_messages_relayed_total{type=\"offer\"} 2\n"));
        assert!(text.contains("switchboard_errors_total{code=\"unknown_type\"} 1\n"));
        assert!(text.contains("switchboard_closes_total{reason=\"slow_consumer\"} 1\n"));
        assert!(text.contains("switchboard_connections 0\n"));
        assert!(text.contains("switchboard_connections_total 1\n"));
        assert!(text.contains("switchboard_rooms 1\n"));
        assert!(text.contains("switchboard_relay_local_recipients_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("switchboard_relay_local_recipients_bucket{le=\"2\"} 2\n"));
        assert!(text.contains("switchboard_relay_local_recipients_count 2\n"));
        assert!(text.contains("switchboard_relay_local_recipients_sum 3\n"));
    }
}
