//! What every reconcile shares: the client, the event reporter, the metrics, the per-object
//! backoff and which optional APIs the server offers; and publishing an Event for a cluster.

use std::sync::Arc;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::api::SignalingCluster;
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    /// Who publishes events. Each event gets a fresh `Recorder` (see [`Context::publish`]).
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    pub support: ApiSupport,
}

/// Which optional APIs the server offers (1.20 has neither autoscaling/v2 nor policy/v1);
/// only those are watched and written.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiSupport {
    pub hpa_v2: bool,
    pub pdb_v1: bool,
}

impl Context {
    /// Publishes an Event about `sc`, best effort: a failed event is logged, never returned
    /// (it must not fail, and so repeat, the reconcile).
    pub async fn publish(
        &self,
        sc: &SignalingCluster,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        // A fresh Recorder per event: a long-lived one folds events into a series keyed
        // without the note (for minutes), so a later transition would show the first
        // transition's note. Events are emitted only on transitions: nothing worth folding.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &sc.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}
