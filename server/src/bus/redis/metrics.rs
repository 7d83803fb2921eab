//! Redis bus metrics: publish latency histogram, reconnects, presence cleanups. Process-wide
//! atomics (one bus per process) rendered in the Prometheus text format by [`render`], which
//! the server's `/metrics` output appends. No I/O here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency buckets: loopback to a slow remote Redis.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

struct Metrics {
    /// Cumulative counts per bucket are computed at render time; these are per-bucket.
    publish_buckets: [AtomicU64; BUCKETS.len()],
    publish_count: AtomicU64,
    publish_sum_micros: AtomicU64,
    reconnects_commands: AtomicU64,
    reconnects_subscriber: AtomicU64,
    cleanups: AtomicU64,
    cleaned_participants: AtomicU64,
}

static METRICS: Metrics = Metrics {
    publish_buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
    publish_count: AtomicU64::new(0),
    publish_sum_micros: AtomicU64::new(0),
    reconnects_commands: AtomicU64::new(0),
    reconnects_subscriber: AtomicU64::new(0),
    cleanups: AtomicU64::new(0),
    cleaned_participants: AtomicU64::new(0),
};

/// Records how long one PUBLISH took (until Redis acknowledged it).
pub fn publish_latency(elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
        METRICS.publish_buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    METRICS.publish_count.fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    METRICS
        .publish_sum_micros
        .fetch_add(micros, Ordering::Relaxed);
}

/// Which connection came back: `commands` or `subscriber`.
pub fn reconnected(connection: &'static str) {
    let counter = if connection == "subscriber" {
        &METRICS.reconnects_subscriber
    } else {
        &METRICS.reconnects_commands
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One dead instance cleaned up, with how many participants it still had.
pub fn presence_cleanup(participants: usize) {
    METRICS.cleanups.fetch_add(1, Ordering::Relaxed);
    METRICS
        .cleaned_participants
        .fetch_add(participants as u64, Ordering::Relaxed);
}

/// Appends the bus metrics in the Prometheus text exposition format.
pub fn render(out: &mut String) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let buckets: Vec<u64> = METRICS.publish_buckets.iter().map(load).collect();
    render_values(
        out,
        &Snapshot {
            buckets,
            count: load(&METRICS.publish_count),
            sum_micros: load(&METRICS.publish_sum_micros),
            reconnects_commands: load(&METRICS.reconnects_commands),
            reconnects_subscriber: load(&METRICS.reconnects_subscriber),
            cleanups: load(&METRICS.cleanups),
            cleaned_participants: load(&METRICS.cleaned_participants),
        },
    );
}

struct Snapshot {
    buckets: Vec<u64>,
    count: u64,
    sum_micros: u64,
    reconnects_commands: u64,
    reconnects_subscriber: u64,
    cleanups: u64,
    cleaned_participants: u64,
}

fn render_values(out: &mut String, s: &Snapshot) {
    // `write!` into a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP switchboard_bus_publish_duration_seconds Time until Redis acknowledged a PUBLISH.\n\
         # TYPE switchboard_bus_publish_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (le, n) in BUCKETS.iter().zip(&s.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "switchboard_bus_publish_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "switchboard_bus_publish_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
         switchboard_bus_publish_duration_seconds_sum {}\n\
         switchboard_bus_publish_duration_seconds_count {}",
        s.count,
        s.sum_micros as f64 / 1e6,
        s.count
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_bus_reconnects_total Redis connections re-established after a failure.\n\
         # TYPE switchboard_bus_reconnects_total counter\n\
         switchboard_bus_reconnects_total{{connection=\"commands\"}} {}\n\
         switchboard_bus_reconnects_total{{connection=\"subscriber\"}} {}",
        s.reconnects_commands, s.reconnects_subscriber
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_bus_presence_cleanups_total Dead instances whose presence this instance removed.\n\
         # TYPE switchboard_bus_presence_cleanups_total counter\n\
         switchboard_bus_presence_cleanups_total {}\n\
         # HELP switchboard_bus_presence_cleanup_participants_total Participants removed with dead instances.\n\
         # TYPE switchboard_bus_presence_cleanup_participants_total counter\n\
         switchboard_bus_presence_cleanup_participants_total {}",
        s.cleanups, s.cleaned_participants
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_cumulative_histogram_and_counters() {
        let mut buckets = vec![0; BUCKETS.len()];
        buckets[0] = 2;
        buckets[3] = 1;
        let mut out = String::new();
        render_values(
            &mut out,
            &Snapshot {
                buckets,
                count: 4,
                sum_micros: 1_500_000,
                reconnects_commands: 1,
                reconnects_subscriber: 3,
                cleanups: 1,
                cleaned_participants: 5,
            },
        );
        for line in [
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.0005\"} 2",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.001\"} 2",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"0.005\"} 3",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"2.5\"} 3",
            "switchboard_bus_publish_duration_seconds_bucket{le=\"+Inf\"} 4",
            "switchboard_bus_publish_duration_seconds_sum 1.5",
            "switchboard_bus_publish_duration_seconds_count 4",
            "switchboard_bus_reconnects_total{connection=\"subscriber\"} 3",
            "switchboard_bus_presence_cleanups_total 1",
            "switchboard_bus_presence_cleanup_participants_total 5",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
