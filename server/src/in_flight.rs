//! Relays a connection has handed to a bus that numbers deliveries ([`Bus::deliver`]) and not
//! had answered yet. The reader does not wait for each one's round trip to Redis: what it
//! reads while a batch is with the bus goes out as the next batch, in one round trip, once
//! that one is answered. Up to [`DELIVERIES_IN_FLIGHT`] wait at a time. Every reply to the
//! client (`ack`, `error`, `pong`, `token-refreshed`) still goes out in the order the client's
//! messages were read: one that needs no bus waits behind the deliveries read before it.
//!
//! Order at the recipients: one batch at a time, so one connection's relays reach Redis in
//! the order they were read, and a batch runs in order. A relay read before the batch ahead
//! of it was answered, and behind a seq that batch's answers told the client to send again,
//! is refused at sending time like one read later ([`crate::resend_order`]); within a batch,
//! each numbered relay [follows](RelayDelivery::follows) the one before it, so one that failed on
//! its own is not overtaken either.
//!
//! [`Bus::deliver`]: crate::bus::Bus::deliver

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use crate::bus::{BusError, Delivered, RelayDelivery};
use crate::protocol::{ErrorCode, Frame, RelayKind};

/// Deliveries one connection may have waiting for the bus (sent or to be sent). A client
/// that sends faster waits for an answer before its next message is read. At 32 a burst of
/// ICE candidates goes out in one or two round trips.
pub const DELIVERIES_IN_FLIGHT: usize = 32;

/// Replies one connection may have waiting, deliveries' included: pings answered behind a
/// delivery Redis is slow to answer wait here, not in the outbox, so they are bounded here.
pub const REPLIES_WAITING: usize = 2 * DELIVERIES_IN_FLIGHT;

/// Bytes of frames (relays waiting for the bus, `pong`s and other replies behind them) one
/// connection may hold here, as much as its outbox may (`WEBRTC_OUTBOUND_QUEUE_BYTES`'s
/// default): what a client makes the server hold while Redis is slow stays bounded.
pub const BYTES_WAITING: usize = 1 << 20;

/// The bus's answer to one delivery, for the client message it came from.
pub struct Answer {
    /// The client message's seq, if it had one.
    pub seq: Option<u64>,
    pub kind: RelayKind,
    /// With [`Delivered::Behind`]: the seq the client must send again first.
    pub behind: Option<u64>,
    pub outcome: Result<Delivered, BusError>,
}

/// A reply to one client message.
pub enum Reply {
    /// The bus's answer to a delivery.
    Delivery(Answer),
    /// `ack` of a numbered message (nothing for one without a seq).
    Ack(Option<u64>),
    Error {
        code: ErrorCode,
        message: Cow<'static, str>,
        seq: Option<u64>,
    },
    /// A reply frame of its own (`pong`, `token-refreshed`).
    Frame(Frame),
}

/// A batch with the bus: its answers, one per delivery, in order.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Vec<Answer>> + Send + 'a>>;

enum Slot {
    Ready(Reply),
    /// A delivery's answer, once its batch is answered.
    Waiting,
}

/// The connection's replies in read order and the deliveries they wait for.
#[derive(Default)]
pub struct InFlight<'a> {
    /// Allocated at the first delivery: a connection that never relays through a numbering
    /// bus keeps one word for it.
    state: Option<Box<State<'a>>>,
}

#[derive(Default)]
struct State<'a> {
    replies: VecDeque<Slot>,
    /// The batch with the bus; its deliveries are the first `Waiting` slots.
    sending: Option<Sending<'a>>,
    /// Relays read since it went out: the next batch.
    next_batch: Vec<RelayDelivery>,
    /// Frame bytes of each delivery not answered yet (in both), in order.
    waiting_bytes: VecDeque<usize>,
    /// Frame bytes held: deliveries not answered and replies not taken.
    bytes: usize,
}

impl<'a> InFlight<'a> {
    /// Whether no reply is pending.
    pub fn is_empty(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.replies.is_empty())
    }

    /// Whether the reader must wait for an answer before reading the next message.
    pub fn is_full(&self) -> bool {
        self.state.as_ref().is_some_and(|s| {
            s.waiting_bytes.len() >= DELIVERIES_IN_FLIGHT
                || s.replies.len() >= REPLIES_WAITING
                || s.bytes >= BYTES_WAITING
        })
    }

    /// Whether a batch is with the bus.
    pub fn is_sending(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.sending.is_some())
    }

    /// Adds a relay to the next batch; its answer takes its place among the replies.
    pub fn push(&mut self, delivery: RelayDelivery) {
        let state = self.state.get_or_insert_with(Box::default);
        let bytes = delivery.message.frame.len();
        state.next_batch.push(delivery);
        state.replies.push_back(Slot::Waiting);
        state.waiting_bytes.push_back(bytes);
        state.bytes += bytes;
    }

    /// A reply that needs no bus: handed back to be sent now when no reply is pending, else
    /// kept to follow the ones before it.
    pub fn behind(&mut self, reply: Reply) -> Option<Reply> {
        match self.state.as_mut() {
            Some(state) if !state.replies.is_empty() => {
                state.bytes += bytes_of(&reply);
                state.replies.push_back(Slot::Ready(reply));
                None
            }
            _ => Some(reply),
        }
    }

    /// The relays read since the last batch, once every reply before them has been taken
    /// (so the batch before is answered and the client's seqs held back are known).
    pub fn next_batch(&mut self) -> Option<Vec<RelayDelivery>> {
        let state = self.state.as_mut()?;
        let turn = state.sending.is_none()
            && !state.next_batch.is_empty()
            && matches!(state.replies.front(), Some(Slot::Waiting));
        turn.then(|| std::mem::take(&mut state.next_batch))
    }

    /// The batch taken with [`next_batch`](Self::next_batch) is with the bus.
    pub fn sending(&mut self, sending: Sending<'a>) {
        if let Some(state) = self.state.as_mut() {
            state.sending = Some(sending);
        }
    }

    /// The replies whose turn has come, in order: at once when there are some, else when
    /// the batch with the bus is answered; none when no batch is (nothing pending, or a
    /// batch not sent yet). Cancel-safe: a batch not answered yet stays with the bus.
    pub async fn next(&mut self) -> Vec<Reply> {
        let Some(state) = self.state.as_mut() else {
            return Vec::new();
        };
        if !matches!(state.replies.front(), Some(Slot::Ready(_))) {
            let Some(sending) = state.sending.as_mut() else {
                return Vec::new();
            };
            let answers = sending.await;
            state.sending = None;
            state.answered(answers);
        }
        state.take_ready()
    }
}

impl State<'_> {
    /// Fills the first waiting slots (the batch just answered) with its answers.
    fn answered(&mut self, answers: Vec<Answer>) {
        let mut answers = answers.into_iter();
        for slot in self.replies.iter_mut() {
            if matches!(slot, Slot::Waiting) {
                let Some(answer) = answers.next() else { break };
                *slot = Slot::Ready(Reply::Delivery(answer));
                let bytes = self.waiting_bytes.pop_front().unwrap_or(0);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
        }
    }

    fn take_ready(&mut self) -> Vec<Reply> {
        let mut ready = Vec::new();
        while let Some(Slot::Ready(_)) = self.replies.front() {
            if let Some(Slot::Ready(reply)) = self.replies.pop_front() {
                self.bytes = self.bytes.saturating_sub(bytes_of(&reply));
                ready.push(reply);
            }
        }
        ready
    }
}

/// The bytes a reply kept behind deliveries holds (a delivery's are counted while it waits).
fn bytes_of(reply: &Reply) -> usize {
    match reply {
        Reply::Frame(frame) => frame.len(),
        Reply::Error { message, .. } => message.len(),
        Reply::Ack(_) | Reply::Delivery(_) => 0,
    }
}

/// The answers to a batch, in its order: `kinds` each relay's seq and kind, `plans` what
/// [`plan`] made of it, `outcomes` the bus's outcome of each one sent with the seq it
/// followed. One the bus gave no outcome for is `delivery_unknown`.
pub fn answers(
    kinds: Vec<(Option<u64>, RelayKind)>,
    plans: Vec<Plan>,
    outcomes: impl IntoIterator<Item = (Result<Delivered, BusError>, Option<u64>)>,
) -> Vec<Answer> {
    let mut outcomes = outcomes.into_iter();
    kinds
        .into_iter()
        .zip(plans)
        .map(|((seq, kind), plan)| {
            let (outcome, behind) = match plan {
                Plan::Behind(first) => (Ok(Delivered::Behind), Some(first)),
                Plan::Send => outcomes.next().unwrap_or_else(|| {
                    let unknown = BusError::DeliveryUnknown {
                        op: "deliver",
                        source: None,
                    };
                    (Err(unknown), None)
                }),
            };
            Answer {
                seq,
                kind,
                behind,
                outcome,
            }
        })
        .collect()
}

/// What becomes of one relay of a batch about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Sent to the bus.
    Send,
    /// Not sent: it comes after this seq, which the client must send again first.
    Behind(u64),
}

/// Splits a batch into what goes to the bus and what is refused before: a numbered relay
/// after the seq the client must send again first (`held`, see [`crate::resend_order`]) is
/// refused, unless that seq is sent before it in this batch; each numbered one sent follows
/// the numbered one sent before it in the batch, so it is taken only after that one.
pub fn plan(batch: Vec<RelayDelivery>, held: Option<u64>) -> (Vec<RelayDelivery>, Vec<Plan>) {
    let mut send = Vec::with_capacity(batch.len());
    let mut plans = Vec::with_capacity(batch.len());
    let mut previous = None;
    let mut held = held;
    for mut delivery in batch {
        let seq = delivery.message.sender_seq;
        match (held, seq) {
            (Some(first), Some(seq)) if seq > first => {
                plans.push(Plan::Behind(first));
                continue;
            }
            // The held seq itself: the ones after it may follow it.
            (Some(first), Some(seq)) if seq == first => held = None,
            _ => {}
        }
        if seq.is_some() {
            delivery.follows = previous;
            previous = seq;
        }
        plans.push(Plan::Send);
        send.push(delivery);
    }
    (send, plans)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::bus::RelayMessage;
    use crate::protocol::Frame;
    use crate::room::RoomId;

    fn delivery(seq: Option<u64>) -> RelayDelivery {
        RelayDelivery {
            message: RelayMessage {
                room_id: RoomId::parse("r").expect("room id"),
                kind: RelayKind::IceCandidate,
                sender_id: "a".into(),
                to: Some("b".into()),
                sender_seq: seq,
                seqs: None,
                frame: Frame::from_json_text("{}".to_owned()),
            },
            recipients: vec!["b".into()],
            follows: None,
        }
    }

    fn answer(seq: Option<u64>) -> Answer {
        Answer {
            seq,
            kind: RelayKind::IceCandidate,
            behind: None,
            outcome: Ok(Delivered::Sent),
        }
    }

    /// What a reply is, to compare orders.
    fn label(reply: &Reply) -> String {
        match reply {
            Reply::Delivery(a) => format!("delivery {:?}", a.seq),
            Reply::Ack(seq) => format!("ack {seq:?}"),
            Reply::Error { seq, .. } => format!("error {seq:?}"),
            Reply::Frame(_) => "frame".into(),
        }
    }

    fn labels(replies: &[Reply]) -> Vec<String> {
        replies.iter().map(label).collect()
    }

    #[tokio::test]
    async fn replies_keep_read_order_across_batches() {
        let mut in_flight = InFlight::default();
        assert!(
            in_flight.behind(Reply::Ack(Some(1))).is_some(),
            "nothing pending: at once"
        );
        in_flight.push(delivery(Some(2)));
        assert!(
            in_flight.behind(Reply::Ack(Some(3))).is_none(),
            "kept behind 2"
        );
        let batch = in_flight.next_batch().expect("first batch");
        assert_eq!(batch.len(), 1);
        let (answered, answer_rx) = tokio::sync::oneshot::channel::<()>();
        in_flight.sending(Box::pin(async move {
            let _ = answer_rx.await;
            vec![answer(Some(2))]
        }));
        // Read while the first batch is with the bus: the next batch, not sent yet.
        in_flight.push(delivery(Some(4)));
        in_flight.push(delivery(Some(5)));
        assert!(in_flight.next_batch().is_none(), "one batch at a time");
        assert!(
            in_flight.next().now_or_never().is_none(),
            "2 not answered yet"
        );
        answered.send(()).expect("batch waiting");
        assert_eq!(
            labels(&in_flight.next().await),
            ["delivery Some(2)", "ack Some(3)"]
        );
        let batch = in_flight.next_batch().expect("second batch");
        assert_eq!(batch.len(), 2);
        assert!(in_flight
            .behind(Reply::Frame(Frame::from_json_text("{}".into())))
            .is_none());
        in_flight.sending(Box::pin(async { vec![answer(Some(4)), answer(Some(5))] }));
        assert_eq!(
            labels(&in_flight.next().await),
            ["delivery Some(4)", "delivery Some(5)", "frame"]
        );
        assert!(in_flight.is_empty());
        assert!(in_flight.next().await.is_empty());
    }

    #[test]
    fn full_at_the_bound_of_unanswered_deliveries() {
        let mut in_flight = InFlight::default();
        for seq in 1..=DELIVERIES_IN_FLIGHT as u64 {
            assert!(!in_flight.is_full());
            in_flight.push(delivery(Some(seq)));
        }
        assert!(in_flight.is_full());
        // Replies that need no bus do not count.
        assert!(in_flight.behind(Reply::Ack(None)).is_none());
        assert!(in_flight.is_full());
    }

    #[test]
    fn replies_behind_a_delivery_are_bounded_by_count_and_bytes() {
        let mut in_flight = InFlight::default();
        in_flight.push(delivery(Some(1)));
        // Pings answered behind it: the reader stops at the bound, whatever the sizes.
        for _ in 1..REPLIES_WAITING {
            assert!(!in_flight.is_full());
            assert!(in_flight.behind(Reply::Ack(None)).is_none());
        }
        assert!(in_flight.is_full(), "count bound");
        let mut in_flight = InFlight::default();
        in_flight.push(delivery(Some(1)));
        let pong = Frame::from_json_text(format!("{{\"p\":\"{}\"}}", "x".repeat(64 * 1024)));
        while !in_flight.is_full() {
            assert!(in_flight.behind(Reply::Frame(pong.clone())).is_none());
        }
        assert!(
            in_flight.state.as_ref().map(|s| s.replies.len()) < Some(REPLIES_WAITING),
            "the byte bound came first"
        );
        // Taken, the bytes are given back.
        let _ = in_flight.next_batch();
        in_flight.sending(Box::pin(async { vec![answer(Some(1))] }));
        let replies = in_flight.next().now_or_never().expect("answered");
        assert!(replies.len() > 1);
        assert!(!in_flight.is_full());
        assert_eq!(in_flight.state.as_ref().map(|s| s.bytes), Some(0));
    }

    #[test]
    fn a_batch_goes_only_after_every_reply_before_it_was_taken() {
        let mut in_flight = InFlight::default();
        in_flight.push(delivery(Some(1)));
        let _ = in_flight.next_batch().expect("batch");
        in_flight.sending(Box::pin(async { vec![answer(Some(1))] }));
        in_flight.push(delivery(Some(2)));
        // Answered but not taken: the client's held seqs are not known yet.
        let replies = in_flight.next().now_or_never().expect("ready");
        assert_eq!(labels(&replies), ["delivery Some(1)"]);
        assert_eq!(in_flight.next_batch().map(|b| b.len()), Some(1));
    }

    #[test]
    fn answers_line_up_with_the_batch_whatever_was_sent() {
        let kind = RelayKind::IceCandidate;
        let kinds = vec![
            (Some(1), kind),
            (Some(2), kind),
            (None, kind),
            (Some(3), kind),
        ];
        let plans = vec![Plan::Send, Plan::Behind(1), Plan::Send, Plan::Send];
        // Two outcomes for three sent: the last one is unknown.
        let outcomes = vec![
            (Ok(Delivered::Sent), None),
            (Ok(Delivered::Behind), Some(1)),
        ];
        let answers = answers(kinds, plans, outcomes);
        let got: Vec<_> = answers
            .iter()
            .map(|a| (a.seq, a.behind, a.outcome.as_ref().ok().copied()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(1), None, Some(Delivered::Sent)),
                (Some(2), Some(1), Some(Delivered::Behind)),
                (None, Some(1), Some(Delivered::Behind)),
                (Some(3), None, None)
            ]
        );
        assert!(matches!(
            answers[3].outcome,
            Err(BusError::DeliveryUnknown { .. })
        ));
    }

    fn seqs_and_follows(send: &[RelayDelivery]) -> Vec<(Option<u64>, Option<u64>)> {
        send.iter()
            .map(|d| (d.message.sender_seq, d.follows))
            .collect()
    }

    #[test]
    fn plan_refuses_what_comes_after_a_held_seq_and_chains_the_rest() {
        let batch = vec![
            delivery(Some(3)),
            delivery(None),
            delivery(Some(4)),
            delivery(Some(9)),
            delivery(Some(5)),
        ];
        // The client must send 5 again first: 9 (before 5 in the batch) waits, 5 itself and
        // earlier ones go.
        let (send, plans) = plan(batch, Some(5));
        use Plan::{Behind, Send};
        assert_eq!(plans, [Send, Send, Send, Behind(5), Send]);
        assert_eq!(
            seqs_and_follows(&send),
            [
                (Some(3), None),
                (None, None),
                (Some(4), Some(3)),
                (Some(5), Some(4))
            ]
        );
    }

    #[test]
    fn the_held_seq_sent_again_lets_the_ones_after_it_in_the_batch_follow_it() {
        // The client re-sends 5, 6, 7 in one go: 6 and 7 go behind 5, each after the one
        // before, so none is taken unless 5 is.
        let batch = vec![delivery(Some(5)), delivery(Some(6)), delivery(Some(7))];
        let (send, plans) = plan(batch, Some(5));
        assert_eq!(plans, [Plan::Send, Plan::Send, Plan::Send]);
        assert_eq!(
            seqs_and_follows(&send),
            [(Some(5), None), (Some(6), Some(5)), (Some(7), Some(6))]
        );
        // Nothing held: everything goes.
        let (_, plans) = plan(vec![delivery(Some(8)), delivery(None)], None);
        assert_eq!(plans, [Plan::Send, Plan::Send]);
    }
}
