//! Prometheus metrics of the operator: reconciles, failures by a bounded error label,
//! reconcile duration, managed clusters and leadership. Rendering only; the HTTP side is
//! in `http`.

use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::SignalingCluster;

/// Label set of the failure counter. `error` comes from `metric_label()` on the error enum,
/// so its values are a small fixed set (never a message or an object name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// Every value of the `error` label: `reconcile::Error::metric_label()` plus the failures
/// counted outside a reconcile (`watch`, `controller`). Registered at 0 on start, so
/// `rate()` and alerts work before the first failure of each kind.
pub const FAILURE_LABELS: &[&str] = &[
    "conflict",
    "forbidden",
    "not_found",
    "invalid",
    "server_error",
    "api_error",
    "transport",
    "serialize",
    "build",
    "render",
    "random",
    "no_namespace",
    "not_owned",
    "watch",
    "controller",
];

/// All operator metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    managed: Gauge,
    leader: Gauge,
    store: Mutex<Option<Store<SignalingCluster>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard_operator");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciliations of SignalingClusters started",
            reconciles.clone(),
        );
        let failures = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by error kind",
            failures.clone(),
        );
        for label in FAILURE_LABELS {
            // The guard is dropped at once: creating the series is the point.
            drop(failures.get_or_create(&ErrorLabels {
                error: (*label).to_owned(),
            }));
        }
        // 5 ms .. ~20 s: a reconcile is a handful of API round trips.
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            duration.clone(),
        );
        let managed = Gauge::default();
        registry.register(
            "managed_clusters",
            "SignalingClusters currently watched by this replica (0 unless it leads)",
            managed.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            managed,
            leader,
            store: Mutex::new(None),
        }
    }

    /// Counts one finished reconcile; `error` is the failure's `metric_label()`.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(label) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    error: label.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a failure that happened outside a reconcile (e.g. a watch error).
    pub fn observe_failure(&self, error: &'static str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The controller's cache of SignalingClusters; read at scrape time so deletions count
    /// too (a deleted object gets no reconcile to update a gauge from).
    pub fn set_store(&self, store: Option<Store<SignalingCluster>>) {
        if let Ok(mut slot) = self.store.lock() {
            *slot = store;
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let managed = self
            .store
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|store| store.state().len()))
            .unwrap_or(0);
        self.managed.set(i64::try_from(managed).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn counts_reconciles_and_failures_by_label() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(30), None);
        m.observe_reconcile(Duration::from_millis(30), Some("kube_api"));
        m.observe_reconcile(Duration::from_millis(30), Some("kube_api"));
        m.observe_failure("watch");
        let text = m.render();
        assert_eq!(
            line(&text, "switchboard_operator_reconciles_total"),
            Some("switchboard_operator_reconciles_total 3")
        );
        assert_eq!(
            line(
                &text,
                "switchboard_operator_reconcile_failures_total{error=\"kube_api\"}"
            ),
            Some("switchboard_operator_reconcile_failures_total{error=\"kube_api\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "switchboard_operator_reconcile_failures_total{error=\"watch\"}"
            ),
            Some("switchboard_operator_reconcile_failures_total{error=\"watch\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "switchboard_operator_reconcile_duration_seconds_count"
            ),
            Some("switchboard_operator_reconcile_duration_seconds_count 3")
        );
        assert_eq!(
            line(
                &text,
                "switchboard_operator_reconcile_duration_seconds_bucket{le=\"0.05\"}"
            ),
            Some("switchboard_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 3")
        );
        assert_eq!(
            line(
                &text,
                "switchboard_operator_reconcile_duration_seconds_bucket{le=\"0.025\"}"
            ),
            Some("switchboard_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 0")
        );
    }

    #[test]
    fn every_failure_label_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for label in FAILURE_LABELS {
            let series =
                format!("switchboard_operator_reconcile_failures_total{{error=\"{label}\"}}");
            assert_eq!(
                line(&text, &series),
                Some(format!("{series} 0").as_str()),
                "{text}"
            );
        }
    }

    #[test]
    fn leader_and_managed_gauges() {
        let m = Metrics::new();
        assert_eq!(
            line(&m.render(), "switchboard_operator_leader "),
            Some("switchboard_operator_leader 0")
        );
        m.set_leader(true);
        let text = m.render();
        assert_eq!(
            line(&text, "switchboard_operator_leader "),
            Some("switchboard_operator_leader 1")
        );
        assert_eq!(
            line(&text, "switchboard_operator_managed_clusters "),
            Some("switchboard_operator_managed_clusters 0")
        );
    }
}
