//! One participant's delivery sequence and inbox, pure: every message that must reach it
//! (relays, server messages) gets the next delivery `seq` and is kept, bounded in messages
//! and bytes, so that a connection which resumes gets what it missed; a sender's re-sent
//! message (same sender, same client `seq`) is recognised and dropped. No I/O, no clock, no
//! room logic: the hub owns one per local participant and decides when to replay.

use std::collections::{HashMap, VecDeque};

use crate::protocol::Frame;

/// How much an inbox keeps: the most recent messages within both bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// What [`Inbox::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Deliver it with this `seq`; it is kept for a resume.
    Deliver(u64),
    /// The same sender sent this client `seq` before: it was delivered already.
    Duplicate,
}

/// Why [`Inbox::replay_after`] cannot bring a connection up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The client claims a `seq` that was never delivered.
    #[error("last_seq is ahead of what was delivered")]
    Ahead,
    /// Some message after the client's `last_seq` is no longer kept.
    #[error("the inbox no longer holds every missed message")]
    Overflow,
}

/// How many client seqs below the highest one a sender's re-sends are recognised for. A
/// re-send further behind than this counts as a duplicate (at most once).
pub const DEDUP_WINDOW: u64 = 128;

/// Senders remembered for duplicate detection; past this the memory starts afresh (a room
/// has at most a few dozen senders at a time, so only a very long session with heavy churn
/// gets here).
const MAX_SENDERS: usize = 4096;

/// The client seqs one sender used: the highest, and which of the [`DEDUP_WINDOW`] below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SeenWindow {
    max: u64,
    /// Bit `i` set: seq `max - 1 - i` was seen.
    below: u128,
}

impl SeenWindow {
    /// Records `seq`; false when it was seen before (or is too old to tell).
    fn first_time(&mut self, seq: u64) -> bool {
        if seq > self.max {
            let shift = seq - self.max;
            let mut below = if shift >= 128 { 0 } else { self.below << shift };
            if self.max > 0 && shift <= 128 {
                below |= 1u128 << (shift - 1);
            }
            self.below = below;
            self.max = seq;
            return true;
        }
        if seq == self.max {
            return false;
        }
        let offset = self.max - 1 - seq;
        if offset >= DEDUP_WINDOW {
            return false;
        }
        let bit = 1u128 << offset;
        if self.below & bit != 0 {
            return false;
        }
        self.below |= bit;
        true
    }
}

/// A participant's delivery sequence, the messages kept for a resume, and the client seqs
/// of its senders.
#[derive(Debug)]
pub struct Inbox {
    limits: InboxLimits,
    /// The `seq` of the last message delivered (0 before the first).
    last_seq: u64,
    /// `(seq, frame without seq)`, oldest first, consecutive seqs ending at `last_seq`.
    kept: VecDeque<(u64, Frame)>,
    bytes: usize,
    seen: HashMap<String, SeenWindow>,
}

impl Inbox {
    pub fn new(limits: InboxLimits) -> Self {
        Inbox {
            limits,
            last_seq: 0,
            kept: VecDeque::new(),
            bytes: 0,
            seen: HashMap::new(),
        }
    }

    /// Numbers `frame` for delivery and keeps it, unless `sender` (participant id and the
    /// client seq it gave the message) delivered it before. Returns how many kept messages
    /// were let go to stay within the bounds, for the caller's metrics.
    pub fn admit(&mut self, sender: Option<(&str, u64)>, frame: &Frame) -> (Admit, usize) {
        if let Some((sender, client_seq)) = sender {
            if self.seen.len() >= MAX_SENDERS && !self.seen.contains_key(sender) {
                self.seen.clear();
            }
            let window = self.seen.entry(sender.to_owned()).or_default();
            if !window.first_time(client_seq) {
                return (Admit::Duplicate, 0);
            }
        }
        self.last_seq += 1;
        self.bytes += frame.len();
        self.kept.push_back((self.last_seq, frame.clone()));
        let mut evicted = 0;
        while self.kept.len() > self.limits.max_messages
            || (self.bytes > self.limits.max_bytes && !self.kept.is_empty())
        {
            if let Some((_, old)) = self.kept.pop_front() {
                self.bytes -= old.len();
                evicted += 1;
            }
        }
        (Admit::Deliver(self.last_seq), evicted)
    }

    /// Every kept message after `last_seq`, in order, each carrying its `seq`.
    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<Frame>, ReplayError> {
        if last_seq > self.last_seq {
            return Err(ReplayError::Ahead);
        }
        if last_seq == self.last_seq {
            return Ok(Vec::new());
        }
        let first_kept = self.kept.front().map_or(self.last_seq + 1, |(seq, _)| *seq);
        if first_kept > last_seq + 1 {
            return Err(ReplayError::Overflow);
        }
        Ok(self
            .kept
            .iter()
            .filter(|(seq, _)| *seq > last_seq)
            .map(|(seq, frame)| frame.with_seq(*seq))
            .collect())
    }

    /// The `seq` of the last message delivered (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame::from_json_text(format!(
            "{{\"type\":\"chat-message\",\"payload\":{n},\"sender_id\":\"a\",\"room_id\":\"r\",\"timestamp\":\"t\",\"to\":null}}"
        ))
    }

    fn limits(max_messages: usize, max_bytes: usize) -> InboxLimits {
        InboxLimits {
            max_messages,
            max_bytes,
        }
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn seqs_count_from_one_and_replay_what_follows_last_seq() {
        let mut inbox = Inbox::new(limits(10, 1 << 20));
        for n in 1..=5 {
            assert_eq!(inbox.admit(None, &frame(n)), (Admit::Deliver(n), 0));
        }
        let replay = inbox.replay_after(2).unwrap();
        assert_eq!(seqs(&replay), [3, 4, 5]);
        // The payload is the original one, the seq spliced in.
        let v: serde_json::Value = serde_json::from_str(replay[0].as_str()).unwrap();
        assert_eq!(v["payload"], 3);
        assert_eq!(v["type"], "chat-message");
        assert!(inbox.replay_after(5).unwrap().is_empty());
        assert_eq!(inbox.replay_after(6), Err(ReplayError::Ahead));
        assert_eq!(seqs(&inbox.replay_after(0).unwrap()), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_missed_message_no_longer_kept_is_an_overflow_never_a_gap() {
        let mut inbox = Inbox::new(limits(3, 1 << 20));
        let mut evicted = 0;
        for n in 1..=5 {
            evicted += inbox.admit(None, &frame(n)).1;
        }
        assert_eq!(evicted, 2);
        assert_eq!(inbox.len(), 3);
        assert_eq!(seqs(&inbox.replay_after(2).unwrap()), [3, 4, 5]);
        assert_eq!(inbox.replay_after(1), Err(ReplayError::Overflow));
        assert_eq!(inbox.replay_after(0), Err(ReplayError::Overflow));
    }

    #[test]
    fn the_byte_bound_keeps_the_newest_messages() {
        let size = frame(1).len();
        let mut inbox = Inbox::new(limits(100, size * 2));
        for n in 1..=4 {
            inbox.admit(None, &frame(n));
        }
        assert_eq!(inbox.len(), 2);
        assert_eq!(seqs(&inbox.replay_after(2).unwrap()), [3, 4]);
        // Keeping nothing: any missed message is an overflow, none missed is fine.
        let mut none = Inbox::new(limits(0, 0));
        none.admit(None, &frame(1));
        assert!(none.is_empty());
        assert_eq!(none.replay_after(0), Err(ReplayError::Overflow));
        assert!(none.replay_after(1).unwrap().is_empty());
    }

    #[test]
    fn a_re_sent_message_is_delivered_once_per_sender() {
        let mut inbox = Inbox::new(limits(10, 1 << 20));
        assert_eq!(inbox.admit(Some(("a", 1)), &frame(1)).0, Admit::Deliver(1));
        assert_eq!(inbox.admit(Some(("a", 2)), &frame(2)).0, Admit::Deliver(2));
        assert_eq!(inbox.admit(Some(("a", 2)), &frame(2)).0, Admit::Duplicate);
        assert_eq!(inbox.admit(Some(("a", 1)), &frame(1)).0, Admit::Duplicate);
        // Another sender's seqs are its own.
        assert_eq!(inbox.admit(Some(("b", 1)), &frame(3)).0, Admit::Deliver(3));
        // A message refused earlier (bus_unavailable) and re-sent after a later one passes.
        assert_eq!(inbox.admit(Some(("a", 5)), &frame(4)).0, Admit::Deliver(4));
        assert_eq!(inbox.admit(Some(("a", 4)), &frame(5)).0, Admit::Deliver(5));
        assert_eq!(inbox.admit(Some(("a", 4)), &frame(5)).0, Admit::Duplicate);
        assert_eq!(inbox.admit(Some(("a", 3)), &frame(6)).0, Admit::Deliver(6));
        // Messages without a client seq are never taken for duplicates.
        assert_eq!(inbox.admit(None, &frame(7)).0, Admit::Deliver(7));
        assert_eq!(inbox.admit(None, &frame(7)).0, Admit::Deliver(8));
        assert_eq!(inbox.last_seq(), 8);
    }

    #[test]
    fn the_dedup_window_follows_the_highest_seq() {
        let mut w = SeenWindow::default();
        assert!(w.first_time(1));
        assert!(w.first_time(200));
        // 1 is now 199 behind: too old to tell, so it counts as seen (at most once).
        assert!(!w.first_time(1));
        assert!(w.first_time(199));
        assert!(!w.first_time(199));
        assert!(w.first_time(200 - DEDUP_WINDOW));
        assert!(!w.first_time(200 - DEDUP_WINDOW - 1));
        // A jump of exactly the window keeps the old highest as the oldest bit.
        let mut w = SeenWindow::default();
        assert!(w.first_time(10));
        assert!(w.first_time(10 + DEDUP_WINDOW));
        assert!(!w.first_time(10));
        assert!(w.first_time(11));
    }
}
