//! Webhook metrics: attempts by endpoint and outcome, events given up, queue depth and the
//! age of the oldest undelivered event per endpoint. Handles on metrics that
//! [`crate::metrics::Metrics`] registers in the server's registry. No I/O here.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    endpoint: String,
}

/// Attempt outcomes: `delivered` (2xx), `rejected` (another status), `timeout`,
/// `unreachable` (no connection); given-up reasons: `exhausted` (retry horizon), `gone` (410).
pub const OUTCOMES: [&str; 4] = ["delivered", "rejected", "timeout", "unreachable"];
pub const GIVE_UPS: [&str; 2] = ["exhausted", "gone"];

/// What the dispatcher records. Clones share the same metrics.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    deliveries: Family<Outcome, Counter>,
    dropped: Family<Outcome, Counter>,
    depth: Family<Endpoint, Gauge>,
    oldest: Family<Endpoint, Gauge<f64, AtomicU64>>,
}

impl WebhookMetrics {
    /// Adds the webhook metrics to `registry` (prefixed `switchboard` by the caller).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by endpoint and outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Webhook events given up by endpoint and reason",
            self.dropped.clone(),
        );
        registry.register(
            "webhook_queue_depth",
            "Webhook events recorded and not yet delivered, by endpoint (cluster-wide on the Redis bus)",
            self.depth.clone(),
        );
        registry.register(
            "webhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered webhook event, by endpoint (0 when none)",
            self.oldest.clone(),
        );
    }

    /// Creates every series of `endpoint` at 0, so dashboards see it before the first event.
    pub fn endpoint(&self, endpoint: &str) {
        for outcome in OUTCOMES {
            drop(
                self.deliveries
                    .get_or_create(&outcome_label(endpoint, outcome)),
            );
        }
        for reason in GIVE_UPS {
            drop(self.dropped.get_or_create(&outcome_label(endpoint, reason)));
        }
        self.queue(endpoint, 0, 0.0);
    }

    pub fn attempt(&self, endpoint: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&outcome_label(endpoint, outcome))
            .inc();
    }

    pub fn given_up(&self, endpoint: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&outcome_label(endpoint, reason))
            .inc();
    }

    /// The queue as the last scan found it.
    pub fn queue(&self, endpoint: &str, depth: u64, oldest_secs: f64) {
        let label = Endpoint {
            endpoint: endpoint.to_owned(),
        };
        self.depth
            .get_or_create(&label)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest.get_or_create(&label).set(oldest_secs);
    }
}

fn outcome_label(endpoint: &str, outcome: &'static str) -> Outcome {
    Outcome {
        endpoint: endpoint.to_owned(),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_of_an_endpoint() {
        let metrics = WebhookMetrics::default();
        let mut registry = Registry::with_prefix("switchboard");
        metrics.register(&mut registry);
        metrics.endpoint("billing");
        metrics.attempt("billing", "delivered");
        metrics.attempt("billing", "rejected");
        metrics.attempt("billing", "rejected");
        metrics.given_up("billing", "exhausted");
        metrics.queue("billing", 7, 2.5);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for line in [
            r#"switchboard_webhook_deliveries_total{endpoint="billing",outcome="delivered"} 1"#,
            r#"switchboard_webhook_deliveries_total{endpoint="billing",outcome="rejected"} 2"#,
            r#"switchboard_webhook_deliveries_total{endpoint="billing",outcome="timeout"} 0"#,
            r#"switchboard_webhook_events_dropped_total{endpoint="billing",outcome="exhausted"} 1"#,
            r#"switchboard_webhook_queue_depth{endpoint="billing"} 7"#,
            r#"switchboard_webhook_oldest_undelivered_seconds{endpoint="billing"} 2.5"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
