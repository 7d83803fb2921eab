//! Redis bus metrics: publish latency histogram, reconnects, presence cleanups, messages read
//! from Redis that failed validation and were dropped. Handles on
//! metrics that [`crate::metrics::Metrics`] registers in the server's registry, so every
//! bus reports into the `/metrics` of the server that owns it. No I/O here.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::inbound::DropReason;

/// Upper bounds (seconds) of the publish latency buckets: loopback to a slow remote Redis.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The two connections a bus holds; both series exist from the start at 0.
const CONNECTIONS: [&str; 2] = ["commands", "subscriber"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// What the Redis bus records. Clones share the same metrics.
#[derive(Debug, Clone)]
pub struct BusMetrics {
    publish: Histogram,
    reconnects: Family<ConnectionLabel, Counter>,
    cleanups: Counter,
    cleaned_participants: Counter,
    dropped: Family<ReasonLabel, Counter>,
}

impl Default for BusMetrics {
    fn default() -> Self {
        let reconnects = Family::<ConnectionLabel, Counter>::default();
        for connection in CONNECTIONS {
            // Creating the series is the point; the guard is dropped at once.
            drop(reconnects.get_or_create(&ConnectionLabel { connection }));
        }
        let dropped = Family::<ReasonLabel, Counter>::default();
        for reason in DropReason::ALL {
            drop(dropped.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        BusMetrics {
            publish: Histogram::new(BUCKETS),
            reconnects,
            cleanups: Counter::default(),
            cleaned_participants: Counter::default(),
            dropped,
        }
    }
}

impl BusMetrics {
    /// Adds the bus metrics to `registry` (prefixed `switchboard` by the caller).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bus_publish_duration_seconds",
            "Time until Redis acknowledged a PUBLISH",
            self.publish.clone(),
        );
        registry.register(
            "bus_reconnects",
            "Redis connections re-established after a failure",
            self.reconnects.clone(),
        );
        registry.register(
            "bus_presence_cleanups",
            "Dead instances whose presence this instance removed",
            self.cleanups.clone(),
        );
        registry.register(
            "bus_presence_cleanup_participants",
            "Participants removed with dead instances",
            self.cleaned_participants.clone(),
        );
        registry.register(
            "bus_messages_dropped",
            "Messages read from Redis that failed validation and were dropped, by reason",
            self.dropped.clone(),
        );
    }

    /// Records how long one PUBLISH took (until Redis acknowledged it).
    pub fn publish_latency(&self, elapsed: Duration) {
        self.publish.observe(elapsed.as_secs_f64());
    }

    /// Which connection came back: `commands` or `subscriber`.
    pub fn reconnected(&self, connection: &'static str) {
        self.reconnects
            .get_or_create(&ConnectionLabel { connection })
            .inc();
    }

    /// One dead instance cleaned up, with how many participants it still had.
    pub fn presence_cleanup(&self, participants: usize) {
        self.cleanups.inc();
        self.cleaned_participants.inc_by(participants as u64);
    }

    /// One message read from Redis dropped for `reason`.
    pub(crate) fn bus_message_dropped(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_cumulative_histogram_and_counters() {
        let metrics = BusMetrics::default();
        let mut registry = Registry::with_prefix("switchboard");
        metrics.register(&mut registry);
        for micros in [100, 400, 3_000, 1_496_500] {
            metrics.publish_latency(Duration::from_micros(micros));
        }
        metrics.reconnected("commands");
        for _ in 0..3 {
            metrics.reconnected("subscriber");
        }
        metrics.presence_cleanup(5);
        metrics.bus_message_dropped(DropReason::UnknownSender);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for line in [
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.0005\"} 2",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.001\"} 2",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.005\"} 3",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"2.5\"} 4",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"+Inf\"} 4",
            "switchboard_bus_publish_duration_seconds_count 4",
            "switchboard_bus_reconnects_total{connection=\"commands\"} 1",
            "switchboard_bus_reconnects_total{connection=\"subscriber\"} 3",
            "switchboard_bus_presence_cleanups_total 1",
            "switchboard_bus_presence_cleanup_participants_total 5",
            "switchboard_bus_messages_dropped_total{reason=\"unknown_sender\"} 1",
            "switchboard_bus_messages_dropped_total{reason=\"malformed\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_bus_publish_duration_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sum in\n{out}"));
        assert!((sum - 1.5).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn both_reconnect_series_exist_at_zero() {
        let mut registry = Registry::default();
        BusMetrics::default().register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for connection in CONNECTIONS {
            let line = format!("bus_reconnects_total{{connection=\"{connection}\"}} 0");
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
