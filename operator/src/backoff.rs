//! Per-object exponential backoff after transient reconcile failures: 1 s, 2 s, 4 s, ...
//! capped, reset by a success, forgotten when the cluster is deleted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use crate::api::SignalingCluster;

/// Failures counted per object; the delay doubles with each consecutive failure.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<ObjectRef<SignalingCluster>, u32>>,
}

/// First retry after a transient error.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay after transient errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `failures` (1 = first failure): 1 s, 2 s, 4 s, ... capped.
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

impl Backoff {
    /// Records one more failure and returns how long to wait.
    pub fn fail(&self, obj: &ObjectRef<SignalingCluster>) -> Duration {
        self.record_failure(obj).1
    }

    /// Records one more failure: the consecutive failures so far (1 = this failure starts
    /// the backoff) and how long to wait.
    pub fn record_failure(&self, obj: &ObjectRef<SignalingCluster>) -> (u32, Duration) {
        let Ok(mut map) = self.failures.lock() else {
            return (u32::MAX, BACKOFF_MAX);
        };
        let n = map.entry(obj.clone()).or_insert(0);
        *n = n.saturating_add(1);
        (*n, backoff_delay(*n))
    }

    /// Drops the entry of a cluster that no longer exists (deleted while failing), so the map
    /// does not grow with every cluster ever deleted mid-outage.
    pub fn forget(&self, name: &str, namespace: Option<&str>) {
        if let Ok(mut map) = self.failures.lock() {
            map.retain(|k, _| !(k.name == name && k.namespace.as_deref() == namespace));
        }
    }

    /// Objects currently backing off.
    pub fn len(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no object is backing off.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A success resets the object's backoff.
    pub fn reset(&self, obj: &ObjectRef<SignalingCluster>) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(obj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(9), Duration::from_secs(256));
        assert_eq!(backoff_delay(10), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn backoff_is_per_object_and_resets_on_success() {
        let b = Backoff::default();
        let a = ObjectRef::<SignalingCluster>::new("a").within("ns");
        let c = ObjectRef::<SignalingCluster>::new("c").within("ns");
        assert_eq!(b.fail(&a), Duration::from_secs(1));
        assert_eq!(b.fail(&a), Duration::from_secs(2));
        assert_eq!(b.fail(&a), Duration::from_secs(4));
        assert_eq!(b.fail(&c), Duration::from_secs(1));
        b.reset(&a);
        assert_eq!(b.fail(&a), Duration::from_secs(1));
    }

    #[test]
    fn record_failure_counts_and_forget_prunes_deleted_clusters() {
        let b = Backoff::default();
        let a = ObjectRef::<SignalingCluster>::new("a").within("ns");
        let other_ns = ObjectRef::<SignalingCluster>::new("a").within("other");
        assert_eq!(b.record_failure(&a), (1, Duration::from_secs(1)));
        assert_eq!(b.record_failure(&a), (2, Duration::from_secs(2)));
        assert_eq!(b.record_failure(&other_ns), (1, Duration::from_secs(1)));
        assert_eq!(b.len(), 2);
        b.forget("a", Some("ns"));
        assert_eq!(b.len(), 1);
        assert_eq!(
            b.record_failure(&other_ns).0,
            2,
            "another namespace's entry was dropped"
        );
        b.forget("a", Some("other"));
        assert!(b.is_empty());
    }
}
