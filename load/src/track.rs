//! Delivery bookkeeping, pure: per-stream loss, reordering and duplicate
//! detection for relayed probes, and the presence ledger that checks every
//! churn join and leave was seen exactly once by every observer.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::latency::{Latency, LatencySummary};

/// How one received sequence number relates to what came before on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Newer than everything seen so far (gaps are allowed: they are either
    /// lost or arrive later as [`Seen::Reordered`]).
    InOrder,
    /// Older than the newest seen, and not seen before.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Not a number the sender could have sent (at or past its limit).
    OutOfRange,
}

/// One sender → one receiver stream of sequence numbers `0..limit`.
#[derive(Debug, Clone)]
pub struct StreamTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    limit: u64,
    unique: u64,
    reordered: u64,
    duplicates: u64,
    out_of_range: u64,
}

impl StreamTracker {
    /// A stream whose sender sends at most `limit` messages.
    pub fn new(limit: u64) -> Self {
        StreamTracker {
            seen: Vec::new(),
            highest: None,
            limit,
            unique: 0,
            reordered: 0,
            duplicates: 0,
            out_of_range: 0,
        }
    }

    pub fn observe(&mut self, n: u64) -> Seen {
        if n >= self.limit {
            self.out_of_range += 1;
            return Seen::OutOfRange;
        }
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        match self.highest {
            Some(h) if n < h => {
                self.reordered += 1;
                Seen::Reordered
            }
            _ => {
                self.highest = Some(n);
                Seen::InOrder
            }
        }
    }
}

/// Delivery totals of a run; `lost`, `reordered`, `duplicated` and
/// `out_of_range` must all be zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Messages sent by the load generator.
    pub sent: u64,
    /// Deliveries expected: each message times its recipients.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub out_of_range: u64,
}

impl Delivery {
    /// Adds one receiver's trackers.
    pub fn add_trackers<'a>(&mut self, trackers: impl IntoIterator<Item = &'a StreamTracker>) {
        for t in trackers {
            self.delivered += t.unique;
            self.reordered += t.reordered;
            self.duplicated += t.duplicates;
            self.out_of_range += t.out_of_range;
        }
    }

    /// Adds what the senders sent: `sent` messages each for `recipients`.
    pub fn add_sent(&mut self, sent: u64, recipients: u64) {
        self.sent += sent;
        self.expected += sent * recipients;
    }

    /// Sets `lost` from expected and delivered (call once everything is added).
    pub fn settle(&mut self) {
        self.lost = self.expected.saturating_sub(self.delivered);
    }

    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.reordered == 0 && self.duplicated == 0 && self.out_of_range == 0
    }
}

/// Presence event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    Joined,
    Left,
}

/// One churned participant as its driver saw it (times in µs of the run clock).
#[derive(Debug, Clone)]
pub struct ChurnRecord {
    pub room: usize,
    pub participant_id: String,
    /// Just before the WebSocket connect.
    pub join_started_us: u64,
    /// Just before its close frame was sent; `None` if it never left cleanly.
    pub leave_started_us: Option<u64>,
}

/// One `user-joined` / `user-left` an observer received.
#[derive(Debug, Clone)]
pub struct PresenceSeen {
    pub observer: usize,
    pub participant_id: String,
    pub kind: PresenceKind,
    pub at_us: u64,
}

/// What the presence check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceOutcome {
    /// (observer, churned participant) pairs that should see one join each.
    pub joins_expected: u64,
    pub joins_seen_once: u64,
    pub joins_missing: u64,
    pub joins_duplicated: u64,
    pub leaves_expected: u64,
    pub leaves_seen_once: u64,
    pub leaves_missing: u64,
    pub leaves_duplicated: u64,
    /// Presence events about participants nobody in this run created.
    pub unexpected: u64,
    pub join_latency: LatencySummary,
    pub leave_latency: LatencySummary,
}

impl PresenceOutcome {
    pub fn is_clean(&self) -> bool {
        self.joins_missing == 0
            && self.joins_duplicated == 0
            && self.leaves_missing == 0
            && self.leaves_duplicated == 0
            && self.unexpected == 0
    }
}

/// Checks that each observer of a room saw every churned participant of that
/// room join exactly once and (if it left) leave exactly once; latencies run
/// from the churner's start to the observer's receipt. `known` lists the
/// run's other participants, whose presence events are not churn.
pub fn reconcile_presence(
    churns: &[ChurnRecord],
    seen: &[PresenceSeen],
    observers_by_room: &BTreeMap<usize, Vec<usize>>,
    known: &HashSet<String>,
) -> PresenceOutcome {
    let mut out = PresenceOutcome::default();
    let by_id: HashMap<&str, &ChurnRecord> = churns
        .iter()
        .map(|c| (c.participant_id.as_str(), c))
        .collect();
    let mut counts: HashMap<(usize, &str, PresenceKind), (u64, u64)> = HashMap::new();
    for s in seen {
        if !by_id.contains_key(s.participant_id.as_str()) {
            if !known.contains(&s.participant_id) {
                out.unexpected += 1;
            }
            continue;
        }
        let entry = counts
            .entry((s.observer, s.participant_id.as_str(), s.kind))
            .or_insert((0, s.at_us));
        entry.0 += 1;
    }
    let mut join_latency = Latency::new();
    let mut leave_latency = Latency::new();
    for c in churns {
        let observers = observers_by_room
            .get(&c.room)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for &o in observers {
            out.joins_expected += 1;
            match counts.get(&(o, c.participant_id.as_str(), PresenceKind::Joined)) {
                None => out.joins_missing += 1,
                Some(&(1, at)) => {
                    out.joins_seen_once += 1;
                    join_latency.record(at.saturating_sub(c.join_started_us));
                }
                Some(_) => out.joins_duplicated += 1,
            }
            let Some(left_at) = c.leave_started_us else {
                continue;
            };
            out.leaves_expected += 1;
            match counts.get(&(o, c.participant_id.as_str(), PresenceKind::Left)) {
                None => out.leaves_missing += 1,
                Some(&(1, at)) => {
                    out.leaves_seen_once += 1;
                    leave_latency.record(at.saturating_sub(left_at));
                }
                Some(_) => out.leaves_duplicated += 1,
            }
        }
    }
    out.join_latency = join_latency.summary();
    out.leave_latency = leave_latency.summary();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = StreamTracker::new(1000);
        for n in 0..1000 {
            assert_eq!(t.observe(n), Seen::InOrder);
        }
        let mut d = Delivery::default();
        d.add_sent(1000, 1);
        d.add_trackers([&t]);
        d.settle();
        assert_eq!(d.delivered, 1000);
        assert!(d.is_clean(), "{d:?}");
    }

    #[test]
    fn gap_then_late_arrival_is_a_reorder_not_a_loss() {
        let mut t = StreamTracker::new(10);
        assert_eq!(t.observe(0), Seen::InOrder);
        assert_eq!(t.observe(2), Seen::InOrder);
        assert_eq!(t.observe(1), Seen::Reordered);
        assert_eq!(t.observe(3), Seen::InOrder);
        let mut d = Delivery::default();
        d.add_sent(4, 1);
        d.add_trackers([&t]);
        d.settle();
        assert_eq!((d.lost, d.reordered, d.duplicated), (0, 1, 0));
        assert!(!d.is_clean());
    }

    #[test]
    fn duplicates_are_counted_once_each_and_not_as_deliveries() {
        let mut t = StreamTracker::new(200);
        t.observe(0);
        t.observe(130);
        assert_eq!(t.observe(130), Seen::Duplicate);
        assert_eq!(t.observe(0), Seen::Duplicate);
        assert_eq!(t.unique, 2);
        let mut d = Delivery::default();
        d.add_trackers([&t]);
        assert_eq!((d.delivered, d.duplicated), (2, 2));
    }

    #[test]
    fn missing_numbers_are_lost() {
        let mut t = StreamTracker::new(10);
        for n in [0, 1, 2, 5, 9] {
            t.observe(n);
        }
        let mut d = Delivery::default();
        d.add_sent(10, 1);
        d.add_trackers([&t]);
        d.settle();
        assert_eq!((d.expected, d.delivered, d.lost), (10, 5, 5));
    }

    #[test]
    fn numbers_past_the_limit_are_out_of_range() {
        let mut t = StreamTracker::new(3);
        assert_eq!(t.observe(3), Seen::OutOfRange);
        assert_eq!(t.observe(u64::MAX), Seen::OutOfRange);
        let mut d = Delivery::default();
        d.add_trackers([&t]);
        assert_eq!((d.delivered, d.out_of_range), (0, 2));
    }

    #[test]
    fn fan_out_expects_each_message_per_recipient() {
        let mut d = Delivery::default();
        d.add_sent(100, 9);
        d.settle();
        assert_eq!((d.sent, d.expected, d.lost), (100, 900, 900));
    }

    fn churn(room: usize, id: &str, join: u64, leave: Option<u64>) -> ChurnRecord {
        ChurnRecord {
            room,
            participant_id: id.into(),
            join_started_us: join,
            leave_started_us: leave,
        }
    }

    fn seen(observer: usize, id: &str, kind: PresenceKind, at: u64) -> PresenceSeen {
        PresenceSeen {
            observer,
            participant_id: id.into(),
            kind,
            at_us: at,
        }
    }

    #[test]
    fn presence_seen_exactly_once_by_each_observer() {
        use PresenceKind::*;
        let churns = [churn(0, "c1", 100, Some(1000)), churn(1, "c2", 200, None)];
        let observed = [
            seen(0, "c1", Joined, 150),
            seen(1, "c1", Joined, 170),
            seen(0, "c1", Left, 1100),
            seen(1, "c1", Left, 1300),
            seen(2, "c2", Joined, 260),
            // The observer's own partner: known, not churn.
            seen(0, "partner", Joined, 50),
        ];
        let rooms = BTreeMap::from([(0, vec![0, 1]), (1, vec![2])]);
        let known = HashSet::from(["partner".to_string()]);
        let out = reconcile_presence(&churns, &observed, &rooms, &known);
        assert!(out.is_clean(), "{out:?}");
        assert_eq!((out.joins_expected, out.joins_seen_once), (3, 3));
        assert_eq!((out.leaves_expected, out.leaves_seen_once), (2, 2));
        assert_eq!(out.join_latency.count, 3);
        assert_eq!(out.join_latency.max_us, 70);
        assert_eq!(out.leave_latency.max_us, 300);
        assert_eq!(out.leave_latency.p50_us, 100);
    }

    #[test]
    fn presence_missing_duplicated_and_unexpected_are_reported() {
        use PresenceKind::*;
        let churns = [churn(0, "c1", 0, Some(10))];
        let observed = [
            seen(0, "c1", Joined, 1),
            seen(0, "c1", Joined, 2),
            seen(0, "stranger", Left, 3),
        ];
        let rooms = BTreeMap::from([(0, vec![0, 1])]);
        let out = reconcile_presence(&churns, &observed, &rooms, &HashSet::new());
        assert_eq!(out.joins_expected, 2);
        assert_eq!(out.joins_duplicated, 1);
        assert_eq!(out.joins_missing, 1);
        assert_eq!(out.leaves_missing, 2);
        assert_eq!(out.unexpected, 1);
        assert!(!out.is_clean());
    }
}
