//! Keeps a client's numbered messages in `seq` order across re-sends.
//!
//! A client sends seq 7 (an offer), then 8 and 9 (its ICE candidates) without waiting. If 7 is
//! answered with an error the client re-sends (`bus_unavailable`, `delivery_unknown`) and the
//! bus recovers before 8 is read, relaying 8 would put a candidate ahead of its offer at the
//! receiver. So once a seq is held back, every later seq gets the same kind of answer, without
//! being tried, until the held one comes again and is answered for good: the client re-sends
//! in seq order and the receiver sees 7, 8, 9.

use crate::protocol::ErrorCode;

/// Whether an error code tells the client to send the same message (same `seq`) again.
pub fn client_resends(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::BusUnavailable | ErrorCode::DeliveryUnknown)
}

/// The lowest seq this connection must see again before any later one is relayed.
#[derive(Debug, Default)]
pub struct ResendOrder {
    held_from: Option<u64>,
}

impl ResendOrder {
    /// The seq that must be re-sent before any later one is relayed.
    pub fn held(&self) -> Option<u64> {
        self.held_from
    }

    /// The seq that must be re-sent first if a message with `seq` may not be relayed now.
    /// Messages without a seq, and re-sends of the held seq or earlier ones, always pass.
    pub fn waiting_for(&self, seq: Option<u64>) -> Option<u64> {
        match (self.held_from, seq) {
            (Some(held), Some(seq)) if seq > held => Some(held),
            _ => None,
        }
    }

    /// Records the server's answer to the message with `seq`: an error the client re-sends
    /// (`resend`) holds everything after it; any other answer to the held seq (an ack, a
    /// duplicate, a final error) releases the hold.
    pub fn answered(&mut self, seq: u64, resend: bool) {
        self.held_from = match self.held_from {
            _ if resend => Some(self.held_from.map_or(seq, |held| held.min(seq))),
            Some(held) if held == seq => None,
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_held_until_an_answer_asks_for_a_resend() {
        let mut order = ResendOrder::default();
        assert_eq!(order.waiting_for(Some(1)), None);
        order.answered(1, false);
        assert_eq!(order.waiting_for(Some(2)), None);
    }

    #[test]
    fn later_seqs_wait_behind_a_refused_one_until_it_is_acked() {
        let mut order = ResendOrder::default();
        order.answered(7, true);
        assert_eq!(order.waiting_for(Some(8)), Some(7));
        assert_eq!(order.waiting_for(Some(9)), Some(7));
        // The refusals of 8 and 9 (themselves re-sendable) keep 7 as the one to wait for.
        order.answered(8, true);
        order.answered(9, true);
        assert_eq!(order.waiting_for(Some(9)), Some(7));
        // The re-send of 7 passes; a second refusal keeps the hold.
        assert_eq!(order.waiting_for(Some(7)), None);
        order.answered(7, true);
        assert_eq!(order.waiting_for(Some(8)), Some(7));
        // Once 7 is acked, 8 and 9 follow.
        order.answered(7, false);
        assert_eq!(order.waiting_for(Some(8)), None);
        assert_eq!(order.waiting_for(Some(9)), None);
    }

    #[test]
    fn an_earlier_refusal_moves_the_hold_back() {
        let mut order = ResendOrder::default();
        order.answered(5, true);
        order.answered(3, true);
        assert_eq!(order.waiting_for(Some(4)), Some(3));
        // An answer to another seq leaves 3's hold in place.
        order.answered(5, false);
        assert_eq!(order.waiting_for(Some(4)), Some(3));
        order.answered(3, false);
        assert_eq!(order.waiting_for(Some(4)), None);
    }

    #[test]
    fn a_final_error_for_the_held_seq_releases_it() {
        // e.g. the target left meanwhile: the client will not send it again.
        let mut order = ResendOrder::default();
        order.answered(2, true);
        order.answered(2, false);
        assert_eq!(order.waiting_for(Some(3)), None);
    }

    #[test]
    fn unnumbered_messages_are_never_held() {
        let mut order = ResendOrder::default();
        order.answered(2, true);
        assert_eq!(order.waiting_for(None), None);
    }

    #[test]
    fn only_bus_errors_are_resent() {
        let resent: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| client_resends(*c))
            .collect();
        assert_eq!(
            resent,
            [ErrorCode::BusUnavailable, ErrorCode::DeliveryUnknown]
        );
    }
}
