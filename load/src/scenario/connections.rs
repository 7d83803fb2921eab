//! `connections`: ramps to N idle participants spread over rooms and URLs,
//! measures the join rate (upgrade, JWT verification, room-state) and the
//! server's resident memory per participant above the empty process.

use std::time::Duration;

use super::exchange::{self, Ctx, Shared, Slot};
use crate::report::Run;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionsParams {
    pub participants: usize,
    pub rooms: usize,
    /// How long everyone stays connected before memory is read.
    pub hold: Duration,
}

pub async fn run(ctx: &Ctx, p: &ConnectionsParams) -> anyhow::Result<Run> {
    let n = ctx.targets.len();
    let rooms = p.rooms.max(1);
    let slots: Vec<Slot> = (0..p.participants)
        .map(|k| Slot {
            target: k % n,
            room: format!("{}-idle-{}", ctx.prefix, k % rooms),
            user: format!("idle-{k}"),
            wave: 0,
        })
        .collect();
    let before = exchange::sample_all(ctx).await;
    let joined = exchange::join_all(ctx, &slots, "connections: joining").await?;
    let mut per_target = vec![0u64; n];
    let shared = Shared::new(&[]);
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (i, part) in joined.participants.into_iter().enumerate() {
        let Some(part) = part else { continue };
        per_target[slots[i].target] += 1;
        // Readers answer the server's pings and drain presence updates.
        let (_, reader) =
            exchange::spawn_reader(i, part.stream, part.others, shared.clone(), ctx.epoch, 0);
        readers.push(reader);
        sinks.push(part.sink);
    }
    tokio::time::sleep(p.hold).await;
    let after = exchange::sample_all(ctx).await;
    let outcomes = exchange::close_all(&shared, sinks, readers).await;
    let mut errors = std::collections::BTreeMap::new();
    let mut closes = std::collections::BTreeMap::new();
    for o in outcomes {
        for (k, v) in o.errors {
            *errors.entry(k).or_default() += v;
        }
        if let Some(c) = o.closed {
            *closes.entry(c).or_default() += 1;
        }
    }
    Ok(Run {
        scenario: "connections".into(),
        target: ctx.target_name.clone(),
        urls: ctx.urls(),
        participants: p.participants as u64,
        rooms: rooms as u64,
        duration_secs: if joined.joins.per_sec > 0.0 {
            joined.joins.joined as f64 / joined.joins.per_sec
        } else {
            0.0
        },
        joins: joined.joins,
        servers: exchange::usage_rows(ctx, &before, &after, &per_target, true),
        errors,
        closes,
        ..Run::default()
    })
}
