//! `churn`: in each room a stable pair relays at a steady pace while other
//! participants join and leave again and again; checks that each of the
//! pair saw every join and every leave exactly once, and times
//! `user-joined` / `user-left` from the churner's connect / close.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;

use super::exchange::{self, Ctx, RunShape, SendPlan, Shared, SizeRange};
use super::relay::interval_for;
use crate::client;
use crate::latency::Latency;
use crate::report::{Joins, Run};
use crate::track::{self, ChurnRecord};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChurnParams {
    pub rooms: usize,
    /// Churning participants per room (each one joins and leaves `cycles` times).
    pub churners: usize,
    pub cycles: usize,
    /// Offered messages per second of the stable pairs, all together.
    pub rate: f64,
    pub size: SizeRange,
}

/// How long a churner stays before leaving (uniform in this range).
const STAY_MS: (u64, u64) = (20, 80);
/// How long the observers may take to see the last presence events.
const PRESENCE_SETTLE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct ChurnLog {
    records: Vec<ChurnRecord>,
    joins: Joins,
    latency: Latency,
}

async fn churner(
    ctx: &Ctx,
    room_index: usize,
    room: &str,
    who: usize,
    cycles: usize,
    log: &Mutex<ChurnLog>,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64((room_index * 1000 + who) as u64);
    let n = ctx.targets.len();
    for cycle in 0..cycles {
        let token = ctx.minter.mint(&format!("churn-{room_index}-{who}"))?;
        let target = &ctx.targets[(room_index + who + cycle) % n];
        let join_started_us = ctx.now_us();
        let user = format!("churn-{room_index}-{who}");
        let joined = client::join(
            target,
            room,
            &user,
            &token,
            client::client_config(),
            ctx.join_timeout,
        )
        .await;
        let mut p = match joined {
            Ok(p) => p,
            Err(f) => {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.joins.attempted += 1;
                log.joins.failed += 1;
                *log.joins.failures.entry(f.label()).or_default() += 1;
                continue;
            }
        };
        {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.joins.attempted += 1;
            log.joins.joined += 1;
            log.latency
                .record(u64::try_from(p.join_time.as_micros()).unwrap_or(u64::MAX));
        }
        let stay = Duration::from_millis(rng.random_range(STAY_MS.0..=STAY_MS.1));
        // Keep reading while present, so the server never sees a stuck reader.
        let _ = tokio::time::timeout(stay, async {
            while let Some(Ok(_)) = p.stream.next().await {}
        })
        .await;
        let leave_started_us = ctx.now_us();
        let left = p.sink.send(Message::Close(None)).await.is_ok();
        // Until the server answers the close: the leave is recorded by then.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = p.stream.next().await {}
        })
        .await;
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .push(ChurnRecord {
                room: room_index,
                participant_id: p.id,
                join_started_us,
                leave_started_us: left.then_some(leave_started_us),
            });
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, p: &ChurnParams) -> anyhow::Result<Run> {
    exchange::needs_rooms(ctx, "churn")?;
    let slots = exchange::pair_slots(ctx, "churn", p.rooms);
    let rooms: Vec<String> = slots.iter().step_by(2).map(|s| s.room.clone()).collect();
    let joined = exchange::join_all(ctx, &slots, "churn: joining pairs").await?;
    let mut notes = Vec::new();
    if joined.joins.failed > 0 {
        notes.push(format!(
            "{} of the stable pairs' joins failed",
            joined.joins.failed
        ));
    }
    let exchange::Pairs {
        members,
        recipients,
        per_target,
        observers_by_room,
        ids: known,
    } = exchange::pair_members(ctx, &slots, joined.participants);
    let plan = SendPlan {
        kind: "ice-candidate",
        size: p.size,
        count: None,
        interval: interval_for(p.rate.max(1.0), members.len()),
        window: 32,
    };
    let shared = Shared::new(&recipients);
    let log = Mutex::new(ChurnLog::default());
    let churn_elapsed = Mutex::new(Duration::ZERO);
    let driver = {
        let shared = shared.clone();
        let (log, rooms, churn_elapsed) = (&log, &rooms, &churn_elapsed);
        let observers_by_room = &observers_by_room;
        async move {
            let baseline = shared.presence_seen.load(Ordering::Relaxed);
            let started = Instant::now();
            let tasks = rooms.iter().enumerate().flat_map(|(r, room)| {
                (0..p.churners).map(move |who| churner(ctx, r, room, who, p.cycles, log))
            });
            let results = futures_util::future::join_all(tasks).await;
            *churn_elapsed.lock().unwrap_or_else(|e| e.into_inner()) = started.elapsed();
            if let Some(e) = results.into_iter().find_map(Result::err) {
                eprintln!("churn: a churner stopped early: {e:#}");
            }
            // Wait until the observers have seen every join and leave.
            let expected: u64 = {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.records
                    .iter()
                    .map(|c| {
                        let observers = observers_by_room.get(&c.room).map_or(0, Vec::len) as u64;
                        observers * (1 + u64::from(c.leave_started_us.is_some()))
                    })
                    .sum()
            };
            let deadline = Instant::now() + PRESENCE_SETTLE;
            while shared.presence_seen.load(Ordering::Relaxed) - baseline < expected
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let out = exchange::exchange(
        ctx,
        members,
        plan,
        "churn: relaying",
        Some(driver),
        shared.clone(),
    )
    .await;
    let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
    let presence =
        track::reconcile_presence(&log.records, &out.presence, &observers_by_room, &known);
    let churn_secs = churn_elapsed
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .as_secs_f64();
    let mut joins = log.joins;
    joins.per_sec = if churn_secs > 0.0 {
        joins.joined as f64 / churn_secs
    } else {
        0.0
    };
    joins.latency = log.latency.summary();
    let shape = RunShape {
        scenario: "churn",
        participants: (slots.len() + p.rooms * p.churners) as u64,
        rooms: p.rooms as u64,
        joins,
        offered_per_sec: p.rate,
        per_target: &per_target,
    };
    let mut run = exchange::traffic_run(ctx, shape, out);
    run.presence = Some(presence);
    notes.append(&mut run.notes);
    run.notes = notes;
    Ok(run)
}
