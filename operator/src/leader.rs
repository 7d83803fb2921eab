//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one operator replica
//! reconciles at a time. Pure decision logic ([`Observer`]) plus a small I/O loop
//! ([`LeaderElector::run`]); it does not start or stop the controller itself.
//!
//! The algorithm follows client-go's `leaderelection`: a candidate takes the Lease when it is
//! free, or when its record has not changed for `leaseDurationSeconds` measured on the
//! candidate's own monotonic clock (so clock skew between nodes does not matter); the holder
//! renews every `retry_period` and steps down when it could not renew for `renew_deadline`.
//! Writes use `replace` with the read `resourceVersion`, so two candidates racing for the same
//! Lease get a 409 and exactly one wins.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// Errors talking to the Lease API.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Any API error other than the expected 404/409 outcomes.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Where the Lease lives, who we are and how the timing works.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per process (the Pod name in a cluster).
    pub identity: String,
    /// How long a holder's record stays valid without a renewal.
    pub lease_duration: Duration,
    /// A holder that could not renew for this long stops acting as leader. Must be shorter
    /// than `lease_duration`, so the old leader stops before anyone else may start.
    pub renew_deadline: Duration,
    /// Pause between election rounds (and between renewals).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults (15 s / 10 s / 2 s) scaled to the given lease duration.
    pub fn with_duration(
        name: String,
        namespace: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        let renew_deadline = lease_duration.mul_f64(2.0 / 3.0);
        let retry_period = (lease_duration / 7).max(Duration::from_millis(200));
        Self {
            name,
            namespace,
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
        }
    }
}

/// What one election round should do with the Lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No Lease exists: create it with us as holder.
    Create,
    /// The Lease is free or expired: take it over.
    Take,
    /// We hold it: renew.
    Renew,
    /// Somebody else holds a live Lease.
    Wait { holder: String },
}

/// Remembers when the other holder's record last changed, on our monotonic clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Option<Timestamp>)>,
    seen_at: Option<Instant>,
}

impl Observer {
    /// Decides one round. `now` is injected so tests need no sleeping.
    pub fn decide(
        &mut self,
        lease: Option<&LeaseSpec>,
        identity: &str,
        default_duration: Duration,
        now: Instant,
    ) -> Action {
        let Some(spec) = lease else {
            return Action::Create;
        };
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder.is_empty() {
            // Released (or never held): no need to wait for expiry.
            return Action::Take;
        }
        if holder == identity {
            return Action::Renew;
        }
        let key = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0));
        if self.seen.as_ref() != Some(&key) {
            self.seen = Some(key);
            self.seen_at = Some(now);
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(default_duration);
        match self.seen_at {
            Some(at) if now.duration_since(at) >= duration => Action::Take,
            _ => Action::Wait { holder },
        }
    }
}

/// Runs the election for one process.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observer: Observer,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observer: Observer::default(),
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    /// One election round: returns whether we hold the Lease afterwards.
    pub async fn round(&mut self) -> Result<bool, LeaderError> {
        let current = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.err(e))?;
        let action = self.observer.decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.settings.identity,
            self.settings.lease_duration,
            Instant::now(),
        );
        let now = now_micro();
        let duration = duration_secs(self.settings.lease_duration);
        let result = match (action, current) {
            (Action::Wait { holder }, _) => {
                tracing::debug!(lease = %self.settings.name, %holder, "lease held by another candidate");
                return Ok(false);
            }
            (Action::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.settings.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Action::Take | Action::Renew, None) => return Ok(false),
            (action, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if action == Action::Take {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(now.clone());
                    spec.holder_identity = Some(self.settings.identity.clone());
                }
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(duration);
                // `replace` carries the resourceVersion we read: a concurrent writer makes
                // this fail with 409 instead of silently sharing leadership.
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up if we still hold it, so a successor need not wait for expiry.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Campaigns until `shutdown` resolves, publishing "am I the leader" on `leading`; on
    /// shutdown it releases the Lease if held.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_renew: Option<Instant> = None;
        loop {
            let held = match self.round().await {
                Ok(true) => {
                    last_renew = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    last_renew = None;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    // Keep leading through short API hiccups, but stop before the Lease can
                    // expire for the others.
                    matches!(last_renew, Some(t) if t.elapsed() < self.settings.renew_deadline)
                }
            };
            leading.send_if_modified(|was| {
                if *was != held {
                    if held {
                        tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    } else {
                        tracing::warn!(lease = %self.settings.name, identity = %self.settings.identity, "not leading");
                    }
                    *was = held;
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        leading.send_replace(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease");
        } else {
            tracing::info!(lease = %self.settings.name, "lease released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew_secs: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(
                Timestamp::from_second(1_700_000_000 + renew_secs).unwrap(),
            )),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn missing_lease_is_created() {
        let mut o = Observer::default();
        assert_eq!(o.decide(None, "me", D, Instant::now()), Action::Create);
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        let mut o = Observer::default();
        assert_eq!(
            o.decide(Some(&spec(None, 0, 1)), "me", D, Instant::now()),
            Action::Take
        );
        assert_eq!(
            o.decide(Some(&spec(Some(""), 0, 15)), "me", D, Instant::now()),
            Action::Take
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        let mut o = Observer::default();
        assert_eq!(
            o.decide(Some(&spec(Some("me"), 0, 15)), "me", D, Instant::now()),
            Action::Renew
        );
    }

    #[test]
    fn live_foreign_lease_waits_until_unchanged_for_its_duration() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let other = spec(Some("other"), 0, 10);
        let wait = Action::Wait {
            holder: "other".into(),
        };
        assert_eq!(o.decide(Some(&other), "me", D, t0), wait);
        assert_eq!(
            o.decide(Some(&other), "me", D, t0 + Duration::from_secs(9)),
            wait
        );
        assert_eq!(
            o.decide(Some(&other), "me", D, t0 + Duration::from_secs(10)),
            Action::Take
        );
    }

    #[test]
    fn a_renewal_restarts_the_expiry_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let wait = Action::Wait {
            holder: "other".into(),
        };
        assert_eq!(
            o.decide(Some(&spec(Some("other"), 0, 10)), "me", D, t0),
            wait
        );
        // Renewed at t0+8: counts from when *we* saw it change, not from its timestamp.
        let renewed = spec(Some("other"), 8, 10);
        assert_eq!(
            o.decide(Some(&renewed), "me", D, t0 + Duration::from_secs(8)),
            wait
        );
        assert_eq!(
            o.decide(Some(&renewed), "me", D, t0 + Duration::from_secs(17)),
            wait
        );
        assert_eq!(
            o.decide(Some(&renewed), "me", D, t0 + Duration::from_secs(18)),
            Action::Take
        );
    }

    #[test]
    fn a_new_holder_restarts_the_expiry_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        o.decide(Some(&spec(Some("a"), 0, 10)), "me", D, t0);
        let b = spec(Some("b"), 0, 10);
        assert_eq!(
            o.decide(Some(&b), "me", D, t0 + Duration::from_secs(9)),
            Action::Wait { holder: "b".into() }
        );
        assert_eq!(
            o.decide(Some(&b), "me", D, t0 + Duration::from_secs(12)),
            Action::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn missing_duration_falls_back_to_ours() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let mut s = spec(Some("other"), 0, 1);
        s.lease_duration_seconds = None;
        o.decide(Some(&s), "me", D, t0);
        assert_eq!(
            o.decide(Some(&s), "me", D, t0 + Duration::from_secs(14)),
            Action::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            o.decide(Some(&s), "me", D, t0 + Duration::from_secs(15)),
            Action::Take
        );
    }

    #[test]
    fn settings_keep_the_deadline_below_the_duration() {
        let s = LeaseSettings::with_duration(
            "l".into(),
            "ns".into(),
            "me".into(),
            Duration::from_secs(15),
        );
        assert_eq!(s.renew_deadline, Duration::from_secs(10));
        assert!(s.retry_period < s.renew_deadline);
    }
}
