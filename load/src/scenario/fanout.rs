//! `fanout`: rooms of several participants where everyone broadcasts
//! `chat-message` to the rest of the room; counts deliveries (messages ×
//! recipients) and their latency.

use super::exchange::{self, Ctx, Member, RunShape, SendPlan, SenderSpec, SizeRange, Slot};
use super::relay::interval_for;
use crate::report::Run;

#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutParams {
    pub rooms: usize,
    pub room_size: usize,
    /// Broadcasts per participant.
    pub messages: u64,
    /// Offered broadcasts per second over all senders; 0 = as fast as possible.
    pub rate: f64,
    /// Broadcasts of one sender in flight; `None` = keep every reader's
    /// queue under the server's default outbound bound.
    pub window: Option<u64>,
    pub size: SizeRange,
}

/// A window that keeps (room size − 1) senders × window under 128 queued
/// messages per reader, half the server's default outbound bound.
pub fn default_window(room_size: usize) -> u64 {
    (128 / room_size.saturating_sub(1).max(1) as u64).max(1)
}

pub async fn run(ctx: &Ctx, p: &FanoutParams) -> anyhow::Result<Run> {
    exchange::needs_rooms(ctx, "fanout")?;
    let n = ctx.targets.len();
    let mut slots = Vec::new();
    for r in 0..p.rooms {
        let room = format!("{}-fanout-{r}", ctx.prefix);
        for k in 0..p.room_size {
            slots.push(Slot {
                target: (r * p.room_size + k) % n,
                room: room.clone(),
                user: format!("fanout-{r}-{k}"),
                wave: k,
            });
        }
    }
    let joined = exchange::join_all(ctx, &slots, "fanout: joining").await?;
    let mut per_target = vec![0u64; n];
    let mut by_room: Vec<Vec<_>> = (0..p.rooms).map(|_| Vec::new()).collect();
    for (i, part) in joined.participants.into_iter().enumerate() {
        if let Some(part) = part {
            per_target[slots[i].target] += 1;
            by_room[i / p.room_size].push(part);
        }
    }
    let mut members = Vec::new();
    let mut recipients = Vec::new();
    let mut stream = 0u32;
    for parts in by_room {
        let ids: Vec<String> = parts.iter().map(|p| p.id.clone()).collect();
        let others = parts.len().saturating_sub(1) as u64;
        for part in parts {
            let peers = ids.iter().filter(|id| **id != part.id).cloned().collect();
            members.push(Member {
                participant: part,
                peers,
                send: Some(SenderSpec {
                    stream,
                    to: None,
                    dialect: crate::wire::Dialect::Switchboard,
                }),
            });
            recipients.push(others);
            stream += 1;
        }
    }
    let plan = SendPlan {
        kind: "chat-message",
        size: p.size,
        count: Some(p.messages),
        interval: interval_for(p.rate, members.len()),
        window: p.window.unwrap_or_else(|| default_window(p.room_size)),
    };
    let shape = RunShape {
        scenario: "fanout",
        participants: slots.len() as u64,
        rooms: p.rooms as u64,
        joins: joined.joins,
        offered_per_sec: p.rate,
        per_target: &per_target,
    };
    Ok(exchange::counted_run(ctx, members, &recipients, plan, shape).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_reader_queues_bounded() {
        assert_eq!(default_window(2), 128);
        assert_eq!(default_window(10), 14);
        assert_eq!(default_window(50), 2);
        assert_eq!(default_window(200), 1);
        assert_eq!(default_window(1), 128);
    }
}
