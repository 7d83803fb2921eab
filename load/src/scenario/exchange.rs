//! The machinery the scenarios share: join many participants with bounded
//! concurrency, read every socket (probes, presence, errors, closes), send
//! probes within a window and at an optional pace, then close everything
//! and total it up. Server usage is sampled around the measured phase.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Participant, Sink, Stream, Target};
use crate::latency::Latency;
use crate::progress::{self, Progress};
use crate::report::{Joins, Run, ServerUsage};
use crate::token::Minter;
use crate::track::{Delivery, PresenceKind, PresenceSeen, StreamTracker};
use crate::usage::{self, Sample, Source};
use crate::wire::{self, Dialect, Event, Probe};

/// How long a sender waits for its window to open before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, after the last send, deliveries may stay flat before the run ends.
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// How long closing all sockets may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most probes written per flush when sending as fast as possible.
const SEND_BATCH: u64 = 16;

/// Refuses scenarios that need rooms and presence on a PeerJS target.
pub fn needs_rooms(ctx: &Ctx, scenario: &str) -> anyhow::Result<()> {
    if ctx.targets.iter().any(|t| t.dialect == Dialect::PeerJs) {
        anyhow::bail!("{scenario} needs rooms and presence; a PeerJS server has neither (use relay or connections)");
    }
    Ok(())
}

/// What every scenario run needs.
pub struct Ctx {
    pub targets: Vec<Target>,
    /// Where each target's resource usage comes from.
    pub sources: Vec<Source>,
    pub minter: Arc<Minter>,
    /// Room names start with it, so runs never share a room.
    pub prefix: String,
    /// The one clock of the run: probes carry µs since it.
    pub epoch: Instant,
    pub progress: progress::Mode,
    /// Joins in flight at once.
    pub concurrency: usize,
    pub join_timeout: Duration,
    /// `switchboard` or `ceiling`.
    pub target_name: String,
}

impl Ctx {
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn urls(&self) -> Vec<String> {
        self.targets.iter().map(Target::label).collect()
    }
}

/// Where one participant joins.
#[derive(Debug, Clone)]
pub struct Slot {
    pub target: usize,
    pub room: String,
    pub user: String,
    /// Slots join wave by wave: every join of a wave has its room-state
    /// before the next wave starts (the first side of every pair, then the
    /// other), so each newcomer's join reaches members already registered.
    pub wave: usize,
}

/// Participants joined (`None` where the join failed) and the join figures.
pub struct Joined {
    pub participants: Vec<Option<Participant>>,
    pub joins: Joins,
}

/// Joins every slot, wave by wave, `ctx.concurrency` at a time; tokens are
/// minted first so signing is not counted in the join rate.
pub async fn join_all(ctx: &Ctx, slots: &[Slot], label: &str) -> anyhow::Result<Joined> {
    let tokens: Vec<String> = slots
        .iter()
        .map(|s| ctx.minter.mint(&s.user))
        .collect::<anyhow::Result<_>>()?;
    let done = Arc::new(AtomicU64::new(0));
    let _progress = Progress::start(ctx.progress, label, slots.len() as u64, done.clone());
    let config = client::client_config();
    let started = Instant::now();
    let waves = slots.iter().map(|s| s.wave).max().map_or(0, |w| w + 1);
    let mut results: Vec<Option<Result<Participant, client::JoinFailure>>> =
        slots.iter().map(|_| None).collect();
    for wave in 0..waves {
        let joined: Vec<_> = futures_util::stream::iter(
            slots
                .iter()
                .zip(&tokens)
                .enumerate()
                .filter(|(_, (s, _))| s.wave == wave),
        )
        .map(|(i, (slot, token))| {
            let done = done.clone();
            let target = &ctx.targets[slot.target];
            async move {
                let r = client::join(
                    target,
                    &slot.room,
                    &slot.user,
                    token,
                    config,
                    ctx.join_timeout,
                )
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                (i, r)
            }
        })
        .buffer_unordered(ctx.concurrency.max(1))
        .collect()
        .await;
        for (i, r) in joined {
            results[i] = Some(r);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut joins = Joins {
        attempted: slots.len() as u64,
        ..Joins::default()
    };
    let mut latency = Latency::new();
    let participants = results
        .into_iter()
        .map(|r| match r.unwrap_or(Err(client::JoinFailure::Protocol)) {
            Ok(p) => {
                joins.joined += 1;
                latency.record(u64::try_from(p.join_time.as_micros()).unwrap_or(u64::MAX));
                Some(p)
            }
            Err(f) => {
                joins.failed += 1;
                *joins.failures.entry(f.label()).or_default() += 1;
                None
            }
        })
        .collect();
    joins.per_sec = if elapsed > 0.0 {
        joins.joined as f64 / elapsed
    } else {
        0.0
    };
    joins.latency = latency.summary();
    Ok(Joined {
        participants,
        joins,
    })
}

/// One probe stream (one sender): how far it got, for the window and the drain.
#[derive(Default)]
pub struct Flow {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// Recipients of each message on this stream.
    pub recipients: u64,
    /// Messages each recipient got, one slot per recipient, claimed on its first delivery
    /// (`claimed` counts the slots taken). The window bounds the slowest recipient's lag: a
    /// bound on the sum would let all of a window pile up at one slow reader, from every
    /// sender of the room at once, past the server's outbound queue.
    per_recipient: Vec<AtomicU64>,
    claimed: AtomicU64,
    pub notify: Notify,
}

impl Flow {
    fn new(recipients: u64) -> Flow {
        Flow {
            recipients,
            per_recipient: (0..recipients).map(|_| AtomicU64::new(0)).collect(),
            ..Flow::default()
        }
    }

    /// A reader's first delivery on this stream: its slot (`None` past the expected count,
    /// e.g. a duplicate reader; it then counts in the totals only).
    fn claim(&self) -> Option<usize> {
        let slot = self.claimed.fetch_add(1, Ordering::Relaxed);
        usize::try_from(slot)
            .ok()
            .filter(|s| *s < self.per_recipient.len())
    }

    /// One delivery to the reader holding `slot`.
    fn delivered_to(&self, slot: Option<usize>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = slot.and_then(|s| self.per_recipient.get(s)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// How many of the first `sent` messages the slowest recipient still lacks (a recipient
    /// that got nothing yet lacks all of them).
    fn slowest_lag(&self, sent: u64) -> u64 {
        let claimed = self.claimed.load(Ordering::Relaxed);
        if claimed < self.per_recipient.len() as u64 {
            return sent;
        }
        let slowest = self
            .per_recipient
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(sent);
        sent.saturating_sub(slowest)
    }
}

/// Counters the readers and senders of one run share.
pub struct Shared {
    pub flows: Vec<Flow>,
    pub delivered: Arc<AtomicU64>,
    pub presence_seen: AtomicU64,
    /// Set before we close our own sockets: a close after it is expected.
    pub stopping: AtomicBool,
    /// Tells readers whose socket did not close in time to stop anyway.
    pub halt: watch::Sender<bool>,
}

impl Shared {
    /// `recipients[s]` = recipients of stream `s`.
    pub fn new(recipients: &[u64]) -> Arc<Shared> {
        Arc::new(Shared {
            flows: recipients.iter().map(|&r| Flow::new(r)).collect(),
            delivered: Arc::new(AtomicU64::new(0)),
            presence_seen: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            halt: watch::channel(false).0,
        })
    }

    fn expected(&self) -> u64 {
        self.flows
            .iter()
            .map(|f| f.sent.load(Ordering::Relaxed) * f.recipients)
            .sum()
    }
}

/// The participants a reader has seen in its room, so a sender can wait
/// until its recipients are known to the server it talks to.
#[derive(Default)]
pub struct PeerView {
    known: Mutex<HashSet<String>>,
    changed: Notify,
}

impl PeerView {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until every one of `peers` is known; false on timeout.
    pub async fn wait_for(&self, peers: &[String], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if peers.iter().all(|p| self.lock().contains(p)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

/// What one reader saw.
#[derive(Default)]
pub struct ReaderOutcome {
    pub trackers: HashMap<u32, StreamTracker>,
    /// This reader's slot in each stream's [`Flow`].
    slots: HashMap<u32, Option<usize>>,
    pub latency: Latency,
    pub presence: Vec<PresenceSeen>,
    pub errors: BTreeMap<String, u64>,
    /// Set when the server closed the connection while the run needed it.
    pub closed: Option<String>,
}

/// Reads one participant's socket until it ends.
pub fn spawn_reader(
    observer: usize,
    mut stream: Stream,
    others: Vec<String>,
    shared: Arc<Shared>,
    epoch: Instant,
    stream_limit: u64,
) -> (Arc<PeerView>, JoinHandle<ReaderOutcome>) {
    let view = Arc::new(PeerView::default());
    view.lock().extend(others);
    let seen_by = view.clone();
    let task = tokio::spawn(async move {
        let mut out = ReaderOutcome::default();
        let now_us = || u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut halt = shared.halt.subscribe();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = halt.wait_for(|h| *h) => None,
            };
            let Some(item) = item else { break };
            let text = match item {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    if !shared.stopping.load(Ordering::Relaxed) {
                        out.closed = Some(match frame {
                            Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                            None => "1005".into(),
                        });
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    if !shared.stopping.load(Ordering::Relaxed) {
                        out.closed = Some("transport error".into());
                    }
                    break;
                }
            };
            match wire::classify(&text) {
                Ok(Event::Probe(p)) => record_probe(&mut out, &shared, p, now_us(), stream_limit),
                Ok(Event::Joined { participant_id }) => {
                    seen_by.lock().insert(participant_id.clone());
                    seen_by.changed.notify_waiters();
                    record_presence(
                        &mut out,
                        &shared,
                        observer,
                        participant_id,
                        PresenceKind::Joined,
                        now_us(),
                    );
                }
                Ok(Event::Left { participant_id }) => {
                    record_presence(
                        &mut out,
                        &shared,
                        observer,
                        participant_id,
                        PresenceKind::Left,
                        now_us(),
                    );
                }
                Ok(Event::Error { code }) => *out.errors.entry(code).or_default() += 1,
                Ok(Event::RoomState { .. } | Event::Open | Event::Other) => {}
                Err(wire::Malformed) => {
                    *out.errors.entry("malformed_frame".into()).or_default() += 1
                }
            }
        }
        if !shared.stopping.load(Ordering::Relaxed) && out.closed.is_none() {
            out.closed = Some("stream ended".into());
        }
        out
    });
    (view, task)
}

fn record_probe(out: &mut ReaderOutcome, shared: &Shared, p: Probe, now_us: u64, limit: u64) {
    let tracker = out
        .trackers
        .entry(p.stream)
        .or_insert_with(|| StreamTracker::new(limit));
    let seen = tracker.observe(p.n);
    if matches!(
        seen,
        crate::track::Seen::InOrder | crate::track::Seen::Reordered
    ) {
        out.latency.record(now_us.saturating_sub(p.sent_us));
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(flow) = shared.flows.get(p.stream as usize) {
            let slot = *out.slots.entry(p.stream).or_insert_with(|| flow.claim());
            flow.delivered_to(slot);
        }
    }
}

fn record_presence(
    out: &mut ReaderOutcome,
    shared: &Shared,
    observer: usize,
    participant_id: String,
    kind: PresenceKind,
    at_us: u64,
) {
    shared.presence_seen.fetch_add(1, Ordering::Relaxed);
    out.presence.push(PresenceSeen {
        observer,
        participant_id,
        kind,
        at_us,
    });
}

/// Message sizes: each probe's text length is drawn from `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

/// How senders send.
#[derive(Clone)]
pub struct SendPlan {
    /// Message type (`ice-candidate`, `offer`, `chat-message`).
    pub kind: &'static str,
    pub size: SizeRange,
    /// Messages per sender; `None` = until `stop`.
    pub count: Option<u64>,
    /// Time between two sends of one sender; `None` = as fast as the window allows.
    pub interval: Option<Duration>,
    /// Messages of one sender in flight (sent, not yet delivered to every recipient).
    pub window: u64,
}

/// What a sender did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SenderOutcome {
    pub sent: u64,
    pub stalled: bool,
    pub failed: bool,
}

/// One sender: stream `stream` to `to` (or the room).
pub struct SenderSpec {
    pub stream: u32,
    pub to: Option<String>,
    /// The protocol of the server this sender talks to.
    pub dialect: Dialect,
}

async fn run_sender(
    spec: &SenderSpec,
    sink: &mut Sink,
    plan: &SendPlan,
    flow: &Flow,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> SenderOutcome {
    let mut out = SenderOutcome::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(spec.stream) + 1);
    let limit = plan.count.unwrap_or(u64::MAX);
    let window = plan.window.max(1);
    let mut pace = plan.interval.map(|every| {
        // Spread the senders' first sends over one interval.
        let offset = every.mul_f64(rng.random::<f64>());
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let to = spec.to.as_deref();
    while out.sent < limit && !*stop.borrow() {
        if let Some(pace) = pace.as_mut() {
            tokio::select! {
                _ = pace.tick() => {}
                _ = stop.changed() => break,
            }
        }
        // Wait for room in the window.
        let room = loop {
            let notified = flow.notify.notified();
            let in_flight = flow.slowest_lag(out.sent);
            if in_flight < window {
                break window - in_flight;
            }
            if tokio::time::timeout(STALL_TIMEOUT, notified).await.is_err() {
                out.stalled = true;
                return out;
            }
        };
        let batch = if pace.is_some() {
            1
        } else {
            room.clamp(1, SEND_BATCH).min(limit - out.sent)
        };
        for _ in 0..batch {
            let size = rng.random_range(plan.size.min..=plan.size.max.max(plan.size.min));
            let probe = Probe {
                stream: spec.stream,
                n: out.sent,
                sent_us: u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX),
            };
            let text = wire::encode_probe(spec.dialect, plan.kind, to, &probe, size);
            // Counted before the write: a fast reply may arrive before feed returns.
            out.sent += 1;
            flow.sent.store(out.sent, Ordering::Relaxed);
            if sink.feed(Message::text(text)).await.is_err() {
                out.failed = true;
                return out;
            }
        }
        if sink.flush().await.is_err() {
            out.failed = true;
            return out;
        }
    }
    out
}

/// One joined participant taking part in an exchange.
pub struct Member {
    pub participant: Participant,
    /// Participants it must see before it sends (its recipients).
    pub peers: Vec<String>,
    pub send: Option<SenderSpec>,
}

/// Totals of an exchange.
pub struct ExchangeOutcome {
    pub delivery: Delivery,
    pub latency: Latency,
    pub presence: Vec<PresenceSeen>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    /// From the first send to the last delivery (or the drain timeout).
    pub duration: Duration,
    pub usage_before: Vec<Option<Sample>>,
    pub usage_after: Vec<Option<Sample>>,
    pub problems: Vec<String>,
}

/// Samples every target's usage.
pub async fn sample_all(ctx: &Ctx) -> Vec<Option<Sample>> {
    let mut out = Vec::new();
    for s in &ctx.sources {
        out.push(usage::sample(s).await);
    }
    out
}

/// Server usage rows from two samplings; `participants[t]` joined target `t`.
pub fn usage_rows(
    ctx: &Ctx,
    before: &[Option<Sample>],
    after: &[Option<Sample>],
    participants: &[u64],
    per_participant: bool,
) -> Vec<ServerUsage> {
    ctx.targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (b, a) = (
                before.get(i).copied().flatten(),
                after.get(i).copied().flatten(),
            );
            let n = participants.get(i).copied().unwrap_or(0);
            let source = &ctx.sources[i];
            ServerUsage {
                url: t.label(),
                source: source.label().into(),
                pid: match source {
                    Source::Proc(pid) => Some(*pid),
                    _ => None,
                },
                rss_before_bytes: b.map_or(0, |s| s.rss_bytes),
                rss_after_bytes: a.map_or(0, |s| s.rss_bytes),
                participants: n,
                rss_per_participant_bytes: match (b, a) {
                    (Some(b), Some(a)) if per_participant && n > 0 => {
                        Some(a.rss_bytes.saturating_sub(b.rss_bytes) / n)
                    }
                    _ => None,
                },
                cpu_seconds: match (b, a) {
                    (Some(b), Some(a)) => (a.cpu_seconds - b.cpu_seconds).max(0.0),
                    _ => 0.0,
                },
            }
        })
        .collect()
}

/// Runs an exchange among `members`: readers start at once; senders start
/// once they see their peers and stop after `plan.count` messages, or when
/// `until` completes if it is given (churn). Then deliveries drain, every
/// socket closes, and the outcome is totalled.
pub async fn exchange<F>(
    ctx: &Ctx,
    members: Vec<Member>,
    plan: SendPlan,
    label: &str,
    until: Option<F>,
    shared: Arc<Shared>,
) -> ExchangeOutcome
where
    F: std::future::Future<Output = ()>,
{
    let mut problems = Vec::new();
    let stream_limit = plan.count.unwrap_or(u64::MAX);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let mut idle_sinks = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let start_gate = Arc::new(tokio::sync::Barrier::new(
        members.iter().filter(|m| m.send.is_some()).count() + 1,
    ));
    for (observer, m) in members.into_iter().enumerate() {
        let Participant {
            others,
            sink,
            stream,
            ..
        } = m.participant;
        let (view, reader) = spawn_reader(
            observer,
            stream,
            others,
            shared.clone(),
            ctx.epoch,
            stream_limit,
        );
        readers.push(reader);
        match m.send {
            None => idle_sinks.push(sink),
            Some(spec) => {
                let plan = plan.clone();
                let shared = shared.clone();
                let stop = stop_rx.clone();
                let gate = start_gate.clone();
                let epoch = ctx.epoch;
                let peers = m.peers;
                let join_timeout = ctx.join_timeout;
                senders.push(tokio::spawn(async move {
                    let mut sink = sink;
                    // PeerJS announces nobody: its senders start at once.
                    let ready = spec.dialect == Dialect::PeerJs
                        || view.wait_for(&peers, join_timeout).await;
                    gate.wait().await;
                    if !ready {
                        return (sink, None);
                    }
                    let Some(flow) = shared.flows.get(spec.stream as usize) else {
                        return (sink, None);
                    };
                    let out = run_sender(&spec, &mut sink, &plan, flow, epoch, stop).await;
                    (sink, Some(out))
                }));
            }
        }
    }
    // Every sender has seen its peers (or given up): the measured phase starts.
    start_gate.wait().await;
    let usage_before = sample_all(ctx).await;
    let started = Instant::now();
    let total = plan.count.map_or(0, |c| {
        c * shared.flows.iter().map(|f| f.recipients).sum::<u64>()
    });
    let progress = Progress::start(ctx.progress, label, total, shared.delivered.clone());
    if let Some(until) = until {
        until.await;
        let _ = stop_tx.send(true);
    }
    let mut sinks = idle_sinks;
    let mut not_ready = 0;
    let mut stalled = 0;
    let mut failed = 0;
    for s in senders {
        match s.await {
            Ok((sink, outcome)) => {
                sinks.push(sink);
                match outcome {
                    None => not_ready += 1,
                    Some(o) => {
                        stalled += u64::from(o.stalled);
                        failed += u64::from(o.failed);
                    }
                }
            }
            Err(_) => failed += 1,
        }
    }
    if not_ready > 0 {
        problems.push(format!(
            "{not_ready} senders never saw their recipients join (within {:?})",
            ctx.join_timeout
        ));
    }
    if stalled > 0 {
        problems.push(format!(
            "{stalled} senders stalled: no delivery for {STALL_TIMEOUT:?} with a full window"
        ));
    }
    if failed > 0 {
        problems.push(format!("{failed} senders could not write to their socket"));
    }
    // Drain: until everything expected arrived or deliveries stop moving.
    let mut last = (shared.delivered.load(Ordering::Relaxed), Instant::now());
    while shared.delivered.load(Ordering::Relaxed) < shared.expected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > DRAIN_IDLE {
            break;
        }
    }
    let duration = started.elapsed();
    drop(progress);
    let usage_after = sample_all(ctx).await;
    let outcomes = close_all(&shared, sinks, readers).await;

    let mut delivery = Delivery::default();
    for f in &shared.flows {
        delivery.add_sent(f.sent.load(Ordering::Relaxed), f.recipients);
    }
    let mut latency = Latency::new();
    let mut presence = Vec::new();
    let mut errors = BTreeMap::new();
    let mut closes = BTreeMap::new();
    for o in outcomes {
        delivery.add_trackers(o.trackers.values());
        latency.merge(o.latency);
        presence.extend(o.presence);
        for (k, v) in o.errors {
            *errors.entry(k).or_default() += v;
        }
        if let Some(c) = o.closed {
            *closes.entry(c).or_default() += 1;
        }
    }
    delivery.settle();
    ExchangeOutcome {
        delivery,
        latency,
        presence,
        errors,
        closes,
        duration,
        usage_before,
        usage_after,
        problems,
    }
}

/// Sends a close on every socket, then collects the readers (bounded).
pub async fn close_all(
    shared: &Arc<Shared>,
    sinks: Vec<Sink>,
    readers: Vec<JoinHandle<ReaderOutcome>>,
) -> Vec<ReaderOutcome> {
    shared.stopping.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let closing =
        futures_util::stream::iter(sinks).for_each_concurrent(256, |mut sink| async move {
            let _ = sink.send(Message::Close(None)).await;
        });
    let _ = tokio::time::timeout_at(deadline, closing).await;
    let halter = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let _ = shared.halt.send(true);
        })
    };
    let mut out = Vec::new();
    for r in readers {
        if let Ok(o) = r.await {
            out.push(o);
        }
    }
    halter.abort();
    out
}

/// Slots for `pairs` pairs, pair `i` alone in room `{prefix}-{kind}-{i}`:
/// side A on one server and side B on the next (with several URLs every
/// message crosses the bus), B joining after A.
pub fn pair_slots(ctx: &Ctx, kind: &str, pairs: usize) -> Vec<Slot> {
    let n = ctx.targets.len();
    (0..pairs)
        .flat_map(|i| {
            let room = format!("{}-{kind}-{i}", ctx.prefix);
            (0..2).map(move |side| Slot {
                target: (i + side) % n,
                room: room.clone(),
                user: format!("{kind}-{i}-{side}"),
                wave: side,
            })
        })
        .collect()
}

/// The pairs that joined completely, as members that send to each other.
#[derive(Default)]
pub struct Pairs {
    pub members: Vec<Member>,
    /// Recipients per stream (one each).
    pub recipients: Vec<u64>,
    /// Joined participants per target.
    pub per_target: Vec<u64>,
    /// Room (pair) index → the two members' observer indices.
    pub observers_by_room: BTreeMap<usize, Vec<usize>>,
    /// Every pair member's participant id.
    pub ids: HashSet<String>,
}

/// Builds [`Pairs`] from the results of joining [`pair_slots`].
pub fn pair_members(ctx: &Ctx, slots: &[Slot], joined: Vec<Option<Participant>>) -> Pairs {
    let mut out = Pairs {
        per_target: vec![0; ctx.targets.len()],
        ..Pairs::default()
    };
    let mut parts = joined.into_iter();
    for pair in 0..slots.len() / 2 {
        let (Some(Some(a)), Some(Some(b))) = (parts.next(), parts.next()) else {
            continue; // a failed join is in the join figures
        };
        out.per_target[slots[2 * pair].target] += 1;
        out.per_target[slots[2 * pair + 1].target] += 1;
        let (a_id, b_id) = (a.id.clone(), b.id.clone());
        out.ids.extend([a_id.clone(), b_id.clone()]);
        for (me, peer) in [(a, b_id), (b, a_id)] {
            out.observers_by_room
                .entry(pair)
                .or_default()
                .push(out.members.len());
            out.members.push(Member {
                participant: me,
                peers: vec![peer.clone()],
                send: Some(SenderSpec {
                    stream: out.recipients.len() as u32,
                    to: Some(peer),
                    dialect: ctx.targets[slots[2 * pair].target].dialect,
                }),
            });
            out.recipients.push(1);
        }
    }
    out
}

/// What a message scenario's [`Run`] is made of, besides the exchange.
pub struct RunShape<'a> {
    pub scenario: &'a str,
    pub participants: u64,
    pub rooms: u64,
    pub joins: Joins,
    pub offered_per_sec: f64,
    pub per_target: &'a [u64],
}

/// The report row of a message scenario.
pub fn traffic_run(ctx: &Ctx, shape: RunShape<'_>, out: ExchangeOutcome) -> Run {
    let secs = out.duration.as_secs_f64();
    Run {
        scenario: shape.scenario.into(),
        target: ctx.target_name.clone(),
        urls: ctx.urls(),
        participants: shape.participants,
        rooms: shape.rooms,
        duration_secs: secs,
        joins: shape.joins,
        delivery: Some(out.delivery),
        offered_per_sec: shape.offered_per_sec,
        delivered_per_sec: if secs > 0.0 {
            out.delivery.delivered as f64 / secs
        } else {
            0.0
        },
        latency: Some(out.latency.summary()),
        presence: None,
        servers: usage_rows(
            ctx,
            &out.usage_before,
            &out.usage_after,
            shape.per_target,
            false,
        ),
        errors: out.errors,
        closes: out.closes,
        notes: out.problems,
    }
}

/// An exchange where every sender sends `plan.count` messages, as its report row.
pub async fn counted_run(
    ctx: &Ctx,
    members: Vec<Member>,
    recipients: &[u64],
    plan: SendPlan,
    shape: RunShape<'_>,
) -> Run {
    let label = format!("{}: messages", shape.scenario);
    let shared = Shared::new(recipients);
    let out = exchange(
        ctx,
        members,
        plan,
        &label,
        None::<std::future::Ready<()>>,
        shared,
    )
    .await;
    traffic_run(ctx, shape, out)
}

#[cfg(test)]
mod flow_tests {
    use super::*;

    #[test]
    fn the_window_follows_the_slowest_recipient() {
        let flow = Flow::new(3);
        // Nobody got anything yet: all sent messages are in flight.
        assert_eq!(flow.slowest_lag(5), 5);
        let (a, b, c) = (flow.claim(), flow.claim(), flow.claim());
        for _ in 0..5 {
            flow.delivered_to(a);
            flow.delivered_to(b);
        }
        flow.delivered_to(c);
        // Two readers are caught up; the third lacks 4, and that is what limits the sender,
        // not the 4 of 15 deliveries missing in total.
        assert_eq!(flow.slowest_lag(5), 4);
        for _ in 0..4 {
            flow.delivered_to(c);
        }
        assert_eq!(flow.slowest_lag(5), 0);
        assert_eq!(flow.delivered.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn an_extra_reader_counts_in_the_totals_only() {
        let flow = Flow::new(1);
        let first = flow.claim();
        assert_eq!(flow.claim(), None);
        flow.delivered_to(first);
        flow.delivered_to(None);
        assert_eq!(flow.slowest_lag(1), 0);
        assert_eq!(flow.delivered.load(Ordering::Relaxed), 2);
    }
}
