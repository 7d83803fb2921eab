//! `relay`: pairs in their own rooms exchange targeted messages (ICE- or
//! SDP-sized), paced or as fast as the window allows; with several URLs the
//! two sides of a pair sit on different servers.

use std::time::Duration;

use super::exchange::{self, Ctx, RunShape, SendPlan, SizeRange};
use crate::report::Run;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayParams {
    pub pairs: usize,
    /// Messages per sender (each pair has two senders).
    pub messages: u64,
    /// Offered messages per second over all senders; 0 = as fast as possible.
    pub rate: f64,
    pub window: u64,
    pub size: SizeRange,
}

/// The message type for a size: SDP-sized messages are offers.
fn kind_for(size: SizeRange) -> &'static str {
    if size.min >= 1024 {
        "offer"
    } else {
        "ice-candidate"
    }
}

pub async fn run(ctx: &Ctx, p: &RelayParams) -> anyhow::Result<Run> {
    let slots = exchange::pair_slots(ctx, "relay", p.pairs);
    let joined = exchange::join_all(ctx, &slots, "relay: joining").await?;
    let pairs = exchange::pair_members(ctx, &slots, joined.participants);
    let plan = SendPlan {
        kind: kind_for(p.size),
        size: p.size,
        count: Some(p.messages),
        interval: interval_for(p.rate, pairs.members.len()),
        window: p.window,
    };
    let shape = RunShape {
        scenario: "relay",
        participants: slots.len() as u64,
        rooms: p.pairs as u64,
        joins: joined.joins,
        offered_per_sec: p.rate,
        per_target: &pairs.per_target,
    };
    Ok(exchange::counted_run(ctx, pairs.members, &pairs.recipients, plan, shape).await)
}

/// The time between two sends of one sender for a total offered `rate`.
pub fn interval_for(rate: f64, senders: usize) -> Option<Duration> {
    (rate > 0.0 && senders > 0).then(|| Duration::from_secs_f64(senders as f64 / rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spreads_the_rate_over_senders() {
        assert_eq!(interval_for(0.0, 10), None);
        assert_eq!(interval_for(250.0, 100), Some(Duration::from_millis(400)));
        assert_eq!(interval_for(1000.0, 1), Some(Duration::from_millis(1)));
    }

    #[test]
    fn sdp_sizes_are_offers() {
        assert_eq!(kind_for(SizeRange { min: 200, max: 200 }), "ice-candidate");
        assert_eq!(
            kind_for(SizeRange {
                min: 1024,
                max: 4096
            }),
            "offer"
        );
    }
}
