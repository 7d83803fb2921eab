//! One participant's life: join through the bus, register in the hub, then
//! read client messages and write queued frames concurrently until the
//! client leaves, misbehaves, stops answering pings, falls behind, or the
//! server drains. Generic over `Sink`/`Stream` of WebSocket messages so it is
//! unit-tested with channels; the HTTP layer plugs in the real socket.
//!
//! A connection that is lost (transport error, silence, too slow) rather than
//! closed leaves its participant in the room, detached, for the grace window
//! (`resume.grace_secs`); a new upgrade with the resume token from `room-state`
//! attaches to it ([`crate::hub::Hub::resume`]). Only when the window ends
//! without a resume does the participant leave (`user-left` reason `timeout`).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use crate::auth::{Authenticator, Identity};
use crate::bus::{
    Bus, BusError, Delivered, JoinLimits, JoinOutcome, RelayDelivery, RelayMessage, RelayRef,
};
use crate::config::Limits;
use crate::hub::{Attach, Claim, Hub, Route};
use crate::in_flight::{self, Answer, InFlight, Reply};
use crate::lifetime::{Expiry, Lifetime};
use crate::metrics::Metrics;
use crate::outbox::{CloseCause, Delivery, Next, Outbox};
use crate::protocol::{self, ClientMessage, ErrorCode, Frame, RelayKind};
use crate::ratelimit::{self, RateLimiter, RateLimits, Verdict};
use crate::resend_order::{self, ResendOrder};
use crate::resume::{Refusal, Resume, ResumeRequest};
use crate::room::{LeaveReason, ParticipantInfo, RoomId};
use crate::shutdown::{DrainGuard, Shutdown};

/// WebSocket close codes used by the server.
pub mod close {
    /// Going away: server draining (and dead peers).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: a frame RFC 6455 forbids (bad opcode, reserved bits,
    /// unmasked, fragmented control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Invalid frame payload data: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: auth refusals, rate abuse, token expired, per-user
    /// connection limits.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later: room full, slow consumer, bus unavailable.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Application code: the server API removed this participant.
    pub const REMOVED: u16 = 4001;
    /// Application code: the server API closed the room.
    pub const ROOM_CLOSED: u16 = 4002;
}

/// A liveness tick that runs this much later than due means the process did
/// not run (SIGSTOP, a paused VM, a starved runtime): what the peer sent
/// meanwhile is still unread, so the peer is not judged on that tick.
const STALL_SLACK: Duration = Duration::from_secs(1);

/// How long a draining writer may stay blocked on its socket before the
/// participant is removed anyway.
const DRAIN_STUCK_GRACE: Duration = Duration::from_secs(2);

/// Most frames written per flush.
const WRITE_BATCH: usize = 64;

/// Relays a reader handles before it lets the recipients' writers run. Each
/// yield wakes writers that then write what has queued so far. 50 pairs ×
/// 4,000 ICE-sized messages, with 16 KiB read-ahead: with 8 the writers ran
/// after every few frames (about 48,000 `sendto`; 0.55× the ceiling relay),
/// with 32 they write fuller batches (12,942 `sendto`, the ceiling's count;
/// 0.77×), with 128 a recipient waits longer for its first frame (0.70×). Far
/// below the outbox bound, so one burst never fills a queue.
const RELAYS_PER_YIELD: u32 = 32;

/// A read error from the transport, classified for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message exceeded the size limit (close 1009).
    TooBig,
    /// A frame RFC 6455 forbids; it was consumed whole (close 1002).
    Protocol,
    /// A text message that is not UTF-8; it was consumed whole (close 1007).
    InvalidUtf8,
    /// Anything else: the connection is gone.
    Transport,
}

/// A write error from the transport, classified for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The WebSocket write buffer is at its bound (`limits.write_buffer_bytes`):
    /// the peer is not reading what it is sent, pongs included.
    BufferFull,
    /// The connection is gone.
    Closed,
}

/// A sink whose every error is classified by `classify`. (futures'
/// `sink_map_err` maps only the first error and panics when used again, and
/// a session still writes its close frame after a failed write.)
pub struct ClassifyErrors<S, F> {
    inner: S,
    classify: F,
}

impl<S, F> ClassifyErrors<S, F> {
    pub fn new(inner: S, classify: F) -> Self {
        ClassifyErrors { inner, classify }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F> Sink<Message> for ClassifyErrors<S, F>
where
    S: Sink<Message> + Unpin,
    F: Fn(S::Error) -> WriteError + Unpin,
{
    type Error = WriteError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_ready(cx)
            .map_err(&this.classify)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WriteError> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .start_send(item)
            .map_err(&this.classify)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_flush(cx)
            .map_err(&this.classify)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_close(cx)
            .map_err(&this.classify)
    }
}

/// Everything a session needs from the server.
#[derive(Clone)]
pub struct SessionContext {
    pub room: RoomId,
    pub identity: Identity,
    pub hub: Arc<Hub>,
    pub bus: Arc<dyn Bus>,
    /// Verifies tokens offered with `refresh-token`.
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The instance's limits, shared (each session held its own copy).
    pub limits: Arc<Limits>,
    pub max_participants: usize,
    /// Connections of one user per room, cluster-wide; `None` = no limit.
    pub max_user_connections: Option<usize>,
    pub instance_id: String,
    pub shutdown: Arc<Shutdown>,
    /// Resume tokens and settings.
    pub resume: Arc<Resume>,
    /// `?resume=&last_seq=`: this connection resumes a held participant.
    pub resume_request: Option<ResumeRequest>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed (or the stream ended).
    ClientClosed,
    /// The transport failed.
    Transport,
    TooBig,
    /// The client broke the WebSocket protocol.
    Protocol,
    InvalidUtf8,
    RateLimited,
    SlowConsumer,
    Timeout,
    Draining,
    /// The token's `exp` passed without a `refresh-token`.
    TokenExpired,
    /// `limits.max_session_secs` passed.
    SessionLimit,
    /// The server API removed the participant (or every connection of its user).
    Removed,
    /// The server API closed the room.
    RoomClosed,
    /// A resume attached a newer connection to this participant.
    Superseded,
}

impl From<CloseCause> for End {
    fn from(cause: CloseCause) -> Self {
        match cause {
            CloseCause::SlowConsumer => End::SlowConsumer,
            CloseCause::Draining => End::Draining,
            CloseCause::Removed => End::Removed,
            CloseCause::RoomClosed => End::RoomClosed,
            CloseCause::Superseded => End::Superseded,
        }
    }
}

impl From<Expiry> for End {
    fn from(why: Expiry) -> Self {
        match why {
            Expiry::Token => End::TokenExpired,
            Expiry::SessionLimit => End::SessionLimit,
        }
    }
}

impl End {
    /// The close frame to send, if any.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            End::ClientClosed | End::Transport => None,
            End::TooBig => Some((close::TOO_BIG, "message_too_big")),
            End::Protocol => Some((close::PROTOCOL_ERROR, "protocol_error")),
            End::InvalidUtf8 => Some((close::INVALID_PAYLOAD, "invalid_utf8")),
            End::RateLimited => Some((close::POLICY, "rate_limited")),
            End::SlowConsumer => Some((close::TRY_AGAIN_LATER, "slow_consumer")),
            End::Timeout => Some((close::GOING_AWAY, "timeout")),
            End::Draining => Some((close::GOING_AWAY, "server draining")),
            // The same code and reason as a join refused for an expired token.
            End::TokenExpired => Some((close::POLICY, "token_expired")),
            // The token may still be good: going away invites a reconnect.
            End::SessionLimit => Some((close::GOING_AWAY, "session_limit")),
            End::Removed => Some((close::REMOVED, "removed")),
            End::RoomClosed => Some((close::ROOM_CLOSED, "room_closed")),
            End::Superseded => Some((close::GOING_AWAY, "superseded")),
        }
    }

    /// Whether the connection was lost rather than closed: the participant is held for
    /// a resume instead of leaving.
    pub fn resumable(self) -> bool {
        matches!(self, End::Transport | End::Timeout | End::SlowConsumer)
    }

    /// The `user-left` reason the room sees.
    pub fn leave_reason(self) -> LeaveReason {
        match self {
            End::ClientClosed | End::Transport | End::TooBig | End::Protocol | End::InvalidUtf8 => {
                LeaveReason::Closed
            }
            End::RateLimited => LeaveReason::RateLimited,
            End::SlowConsumer => LeaveReason::SlowConsumer,
            End::Timeout => LeaveReason::Timeout,
            End::Draining => LeaveReason::Draining,
            End::TokenExpired => LeaveReason::TokenExpired,
            End::SessionLimit => LeaveReason::SessionLimit,
            End::Removed => LeaveReason::Removed,
            End::RoomClosed => LeaveReason::RoomClosed,
            End::Superseded => LeaveReason::Closed,
        }
    }

    /// How the close handshake reads the client's answer.
    pub fn after_close(self) -> AfterClose {
        match self {
            // These came as read errors: the transport reads nothing more.
            // tungstenite refuses a frame over the limit at its header.
            End::TooBig => AfterClose::Raw { aligned: false },
            End::Protocol | End::InvalidUtf8 => AfterClose::Raw { aligned: true },
            _ => AfterClose::Drain,
        }
    }

    pub fn metric_label(self) -> &'static str {
        match self {
            End::ClientClosed => "closed",
            End::Transport => "transport_error",
            End::TooBig => "message_too_big",
            End::Protocol => "protocol_error",
            End::InvalidUtf8 => "invalid_utf8",
            End::RateLimited => "rate_limited",
            End::SlowConsumer => "slow_consumer",
            End::Timeout => "timeout",
            End::Draining => "draining",
            End::TokenExpired => "token_expired",
            End::SessionLimit => "session_limit",
            End::Removed => "removed",
            End::RoomClosed => "room_closed",
            End::Superseded => "superseded",
        }
    }
}

/// What the server does with the client's input once it has sent its close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Read and discard until the client's close frame (the handshake).
    Drain,
    /// Read nothing here: after a read error the transport yields nothing
    /// more (tokio-tungstenite ends the stream at its first error). The
    /// caller finishes the handshake on the raw socket
    /// ([`crate::close_drain::finish`]); `aligned` says whether the unread
    /// bytes start at a frame boundary (not after a frame over the size
    /// limit, whose payload is still unread).
    Raw { aligned: bool },
}

/// Ends a connection from the server side (RFC 6455 §7.1): writes `pending`
/// (errors the client should see first) and the close frame, then, per
/// `after`, reads and discards what the client still sends until its close
/// frame or the end of the stream — all within `timeout` (with
/// [`AfterClose::Raw`] it returns once the close is out). A socket closed
/// with unread input makes the kernel send a reset, and a reset makes the
/// client's kernel throw away what it has not read yet: the very errors and
/// close frame this sends. Pings read meanwhile are not answered.
pub async fn close_handshake<S, R>(
    sink: &mut S,
    stream: &mut R,
    pending: Vec<Frame>,
    (code, reason): (u16, &'static str),
    after: AfterClose,
    timeout: Duration,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, ReadError>> + Unpin,
{
    let deadline = Instant::now() + timeout;
    let close = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }));
    let sent = tokio::time::timeout_at(deadline, async {
        for frame in pending {
            if sink.feed(text_message(frame)).await.is_err() {
                break;
            }
        }
        // Out with what the transport holds (a pong it owes) first: it
        // appends that after anything written next, and nothing may follow
        // the close frame.
        let _ = sink.flush().await;
        sink.send(close).await.is_ok()
    })
    .await;
    if sent != Ok(true) {
        // The close never left (the peer takes nothing): nobody will answer it.
        return;
    }
    match after {
        AfterClose::Drain => {
            let _ = tokio::time::timeout_at(deadline, async {
                while let Some(item) = stream.next().await {
                    match item {
                        // After an error the transport yields nothing more.
                        Ok(Message::Close(_)) | Err(_) => break,
                        _ => {}
                    }
                }
            })
            .await;
        }
        // The raw socket is the caller's; closing the sink would write nothing.
        AfterClose::Raw { .. } => return,
    }
    let _ = tokio::time::timeout_at(deadline, sink.close()).await;
}

fn text_message(frame: Frame) -> Message {
    // The frame's bytes, checked as UTF-8 once when it was built.
    Message::Text(frame.into_text())
}

/// Runs one participant until it ends. `sink`/`stream` are the WebSocket
/// halves (already upgraded and authenticated).
pub fn run<S, R>(
    ctx: SessionContext,
    guard: DrainGuard,
    sink: S,
    stream: R,
) -> impl std::future::Future<Output = Option<End>> + Send
where
    S: Sink<Message, Error = WriteError> + Unpin + Send,
    R: Stream<Item = Result<Message, ReadError>> + Unpin + Send,
{
    run_shared(Arc::new(ctx), guard, sink, stream)
}

/// [`run`] with the context already shared. Not `async` itself, and the context and
/// the participant record travel as pointers: an `async fn` keeps its arguments for
/// its whole life, so each layer held its own copy of them (the session's future
/// was the largest part of an idle participant's memory).
pub fn run_shared<S, R>(
    ctx: Arc<SessionContext>,
    guard: DrainGuard,
    sink: S,
    stream: R,
) -> impl std::future::Future<Output = Option<End>> + Send
where
    S: Sink<Message, Error = WriteError> + Unpin + Send,
    R: Stream<Item = Result<Message, ReadError>> + Unpin + Send,
{
    let start = match &ctx.resume_request {
        None => Start::Join(Box::new(ParticipantInfo {
            participant_id: uuid::Uuid::new_v4().to_string(),
            user_id: ctx.identity.user_id.clone(),
            username: ctx.identity.username.clone(),
            joined_at: protocol::now_timestamp(),
            instance_id: ctx.instance_id.clone(),
            metadata: ctx.identity.metadata.clone(),
        })),
        Some(request) => {
            let verified = if ctx.resume.enabled() {
                ctx.resume.verify(
                    &request.token,
                    &ctx.room,
                    &ctx.identity.user_id,
                    crate::auth::now_unix(),
                )
            } else {
                Err(Refusal::Invalid)
            };
            match (verified, request.last_seq) {
                (Ok(claims), Some(last_seq)) => Start::Resume {
                    participant_id: claims.participant_id,
                    last_seq,
                },
                // `last_seq` that is not a number.
                (Ok(_), None) => Start::Refused(Refusal::Invalid),
                (Err(refusal), _) => Start::Refused(refusal),
            }
        }
    };
    let participant = match &start {
        Start::Join(me) => me.participant_id.clone(),
        Start::Resume { participant_id, .. } => participant_id.clone(),
        Start::Refused(_) => String::new(),
    };
    let span = tracing::info_span!("session", room = %ctx.room, participant = %participant, user = %ctx.identity.user_id);
    run_participant(ctx, start, guard, sink, stream).instrument(span)
}

/// How a connection becomes a participant.
enum Start {
    /// A fresh join as this participant.
    Join(Box<ParticipantInfo>),
    /// A resume of a held participant, whose token verified.
    Resume {
        participant_id: String,
        last_seq: u64,
    },
    /// A resume refused before looking for the participant.
    Refused(Refusal),
}

async fn run_participant<S, R>(
    ctx: Arc<SessionContext>,
    start: Start,
    guard: DrainGuard,
    mut sink: S,
    mut stream: R,
) -> Option<End>
where
    S: Sink<Message, Error = WriteError> + Unpin + Send,
    R: Stream<Item = Result<Message, ReadError>> + Unpin + Send,
{
    let session = match start {
        Start::Join(me) => Session::join(ctx, me, &mut sink, &mut stream).await?,
        Start::Resume {
            participant_id,
            last_seq,
        } => Session::resume(ctx, &participant_id, last_seq, &mut sink, &mut stream).await?,
        Start::Refused(refusal) => {
            refuse_resume(&ctx, refusal, &mut sink, &mut stream).await;
            return None;
        }
    };
    let end = session.serve(&mut sink, &mut stream).await;
    session.finish(end, &mut sink, &mut stream).await;
    drop(guard);
    Some(end)
}

/// One joined participant's connection: what its reader, writer and liveness
/// watch share (mini-redis's per-connection `Handler`). The three run
/// concurrently on `&Session`, so what they change is atomic or behind the
/// outbox's lock. State that later features add per connection goes here.
struct Session {
    ctx: Arc<SessionContext>,
    me: Box<ParticipantInfo>,
    /// This participant's queue in the hub; the writer drains it.
    outbox: Arc<Outbox>,
    /// When the join began; `last_seen` counts from here.
    started: Instant,
    /// Milliseconds since `started` when the peer was last heard from.
    last_seen: AtomicU64,
    /// Relays since the reader last yielded (see [`RELAYS_PER_YIELD`]); only the reader uses it.
    relays_since_yield: AtomicU32,
    /// Holds later seqs back behind one the client must re-send; only the reader uses it.
    resend_order: Mutex<ResendOrder>,
    /// When the session must end: the token's `exp` (moved by an accepted
    /// `refresh-token`) or the session limit.
    lifetime: Lifetime,
    /// This connection's hold on its participant in the hub.
    claim: Claim,
}

/// Why a resume through the bus did not happen.
enum AdoptFailed {
    Refused(Refusal),
    Bus(BusError),
}

/// Closes a refused resume with 1008 and its reason, and counts it.
async fn refuse_resume<S, R>(ctx: &SessionContext, refusal: Refusal, sink: &mut S, stream: &mut R)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, ReadError>> + Unpin,
{
    let reason = refusal.reason();
    tracing::info!(reason, "resume refused");
    ctx.metrics.resume(reason);
    ctx.metrics.refused(reason);
    close_handshake(
        sink,
        stream,
        Vec::new(),
        (close::POLICY, reason),
        AfterClose::Drain,
        ctx.limits.close_timeout,
    )
    .await;
}

/// Keeps a participant whose connection was lost for the grace window; if no resume
/// attached it by then, it leaves (`user-left` reason `timeout`).
fn hold_for_resume(ctx: &SessionContext, claim: Claim) {
    let hub = ctx.hub.clone();
    let bus = ctx.bus.clone();
    let room = ctx.room.clone();
    let grace = ctx.resume.grace;
    tokio::spawn(
        async move {
            tokio::time::sleep(grace).await;
            if let Some(info) = hub.expire(&room, &claim) {
                tracing::info!("not resumed within the grace window: left");
                if let Err(e) = bus.leave(&room, &info, LeaveReason::Timeout).await {
                    tracing::warn!(error = %e, "leave not recorded on the bus");
                }
            } else if !hub.is_local(&room, &claim.participant_id) {
                // Resumed on another instance meanwhile.
                bus.release(&room, &claim.participant_id).await;
            }
        }
        .in_current_span(),
    );
}

impl Session {
    /// A connection joining while the drain already tells everyone to leave is
    /// told so too.
    fn drain_if_reconnecting(ctx: &SessionContext, outbox: &Outbox) {
        if ctx.shutdown.is_reconnecting() {
            let window = u64::try_from(ctx.shutdown.window().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let after_ms = rand::rng().random_range(0..window);
            outbox.close_after(
                Some(protocol::encode_reconnect(ctx.room.as_str(), after_ms)),
                CloseCause::Draining,
            );
        }
    }

    /// [`resume`](Self::resume) through a bus that keeps the inboxes: the participant may
    /// have been on any instance (or one that died).
    async fn adopt(
        ctx: &SessionContext,
        participant_id: &str,
        last_seq: u64,
        outbox: &Arc<Outbox>,
    ) -> Result<Result<(ParticipantInfo, Claim), crate::hub::ResumeRefused>, AdoptFailed> {
        ctx.hub.expect_adopt(&ctx.room, participant_id);
        let adopted = ctx
            .bus
            .adopt(&ctx.room, participant_id, &ctx.identity.user_id, last_seq)
            .await;
        let adopted = match adopted {
            Ok(crate::bus::Adoption::Adopted(adopted)) => adopted,
            Ok(crate::bus::Adoption::Overflowed { participant, lost }) => {
                ctx.hub.adopt_failed(&ctx.room, participant_id);
                tracing::info!(lost, "missed messages no longer kept in the inbox");
                ctx.metrics.inbox_overflowed(lost);
                // As an overflow in memory: it leaves here now, and the bus (by the caller).
                ctx.hub.remove_overflowed(&ctx.room, participant_id);
                return Ok(Err(crate::hub::ResumeRefused {
                    refusal: Refusal::Overflow,
                    left: Some(participant),
                }));
            }
            Ok(crate::bus::Adoption::Refused(refusal)) => {
                ctx.hub.adopt_failed(&ctx.room, participant_id);
                return Err(AdoptFailed::Refused(refusal));
            }
            Err(e) => {
                ctx.hub.adopt_failed(&ctx.room, participant_id);
                return Err(AdoptFailed::Bus(e));
            }
        };
        let resume_token = ctx.resume.issue(
            participant_id,
            &ctx.room,
            &ctx.identity.user_id,
            ctx.identity.expires_at,
        );
        let attach = Attach {
            outbox: outbox.clone(),
            inbox: ctx.resume.inbox,
            resume_token: Some(resume_token),
            numbered_by_bus: true,
        };
        let claim = ctx.hub.attach_adopted(&ctx.room, &adopted, attach);
        Ok(Ok((adopted.participant, claim)))
    }

    /// Attaches this connection to the held participant `participant_id` (its token
    /// verified already): `room-state` with `resumed: true`, then what it missed after
    /// `last_seq`. A refusal gets its close frame here and yields `None`.
    async fn resume<S, R>(
        ctx: Arc<SessionContext>,
        participant_id: &str,
        last_seq: u64,
        sink: &mut S,
        stream: &mut R,
    ) -> Option<Session>
    where
        S: Sink<Message> + Unpin,
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let started = Instant::now();
        let outbox = Arc::new(Outbox::new(
            ctx.limits.outbound_queue_messages,
            ctx.limits.outbound_queue_bytes,
        ));
        let resumed = if ctx.bus.numbers_deliveries() {
            match Self::adopt(&ctx, participant_id, last_seq, &outbox).await {
                Ok(resumed) => resumed,
                Err(AdoptFailed::Refused(refusal)) => Err(crate::hub::ResumeRefused {
                    refusal,
                    left: None,
                }),
                Err(AdoptFailed::Bus(e)) => {
                    tracing::warn!(error = %e, "resume refused: bus unavailable");
                    ctx.metrics.error(e.metric_label());
                    ctx.metrics.refused("bus_unavailable");
                    close_handshake(
                        sink,
                        stream,
                        Vec::new(),
                        (close::TRY_AGAIN_LATER, "bus_unavailable"),
                        AfterClose::Drain,
                        ctx.limits.close_timeout,
                    )
                    .await;
                    return None;
                }
            }
        } else {
            ctx.hub.resume(
                &ctx.room,
                participant_id,
                &ctx.identity.user_id,
                last_seq,
                outbox.clone(),
            )
        };
        let (me, claim) = match resumed {
            Ok(resumed) => resumed,
            Err(crate::hub::ResumeRefused { refusal, left }) => {
                if let Some(info) = left {
                    // Nobody will resume it now: the room learns it left.
                    if let Err(e) = ctx.bus.leave(&ctx.room, &info, LeaveReason::Closed).await {
                        tracing::warn!(error = %e, "leave not recorded on the bus");
                    }
                }
                refuse_resume(&ctx, refusal, sink, stream).await;
                return None;
            }
        };
        ctx.metrics.resume("ok");
        ctx.metrics.connection_opened();
        tracing::info!(last_seq, "resumed");
        Self::drain_if_reconnecting(&ctx, &outbox);
        let lifetime = Lifetime::new(
            ctx.identity.expires_at,
            crate::auth::now_unix(),
            ctx.limits.max_session,
        );
        Some(Session {
            ctx,
            me: Box::new(me),
            outbox,
            started,
            last_seen: AtomicU64::new(0),
            lifetime,
            claim,
            relays_since_yield: AtomicU32::new(0),
            resend_order: Mutex::default(),
        })
    }

    /// Joins through the bus and registers in the hub (which queues
    /// `room-state`). A refused join gets its close frame here and yields
    /// `None`.
    async fn join<S, R>(
        ctx: Arc<SessionContext>,
        me: Box<ParticipantInfo>,
        sink: &mut S,
        stream: &mut R,
    ) -> Option<Session>
    where
        S: Sink<Message> + Unpin,
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let started = Instant::now();
        let limits = JoinLimits {
            capacity: ctx.max_participants,
            per_user: ctx.max_user_connections,
        };
        // Either way a refusal ends the same: counted, then closed with its code and reason.
        let joined = match ctx.bus.join(&ctx.room, &me, limits).await {
            Ok(JoinOutcome::Joined { participants }) => Ok(participants),
            Ok(JoinOutcome::RoomFull) => {
                tracing::info!("join refused: room full");
                Err((close::TRY_AGAIN_LATER, "room_full"))
            }
            Ok(JoinOutcome::UserLimit) => {
                // Policy, not load: retrying does not help until one of the
                // user's own connections to this room closes.
                tracing::info!(
                    limit = ctx.max_user_connections,
                    "join refused: the user holds the most connections allowed in this room"
                );
                Err((close::POLICY, "user_room_limit"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "join refused: bus unavailable");
                ctx.metrics.error(e.metric_label());
                Err((close::TRY_AGAIN_LATER, "bus_unavailable"))
            }
        };
        let participants = match joined {
            Ok(participants) => participants,
            Err((code, reason)) => {
                ctx.metrics.refused(reason);
                close_handshake(
                    sink,
                    stream,
                    Vec::new(),
                    (code, reason),
                    AfterClose::Drain,
                    ctx.limits.close_timeout,
                )
                .await;
                return None;
            }
        };

        let outbox = Arc::new(Outbox::new(
            ctx.limits.outbound_queue_messages,
            ctx.limits.outbound_queue_bytes,
        ));
        let resume_token = ctx.resume.enabled().then(|| {
            ctx.resume.issue(
                &me.participant_id,
                &ctx.room,
                &me.user_id,
                ctx.identity.expires_at,
            )
        });
        let attach = Attach {
            outbox: outbox.clone(),
            inbox: ctx.resume.inbox,
            numbered_by_bus: ctx.bus.numbers_deliveries(),
            resume_token,
        };
        let claim = ctx.hub.join(&ctx.room, &me, attach, &participants);
        ctx.metrics.connection_opened();
        ctx.metrics.join_duration(started.elapsed().as_secs_f64());
        tracing::info!(participants = participants.len(), "joined");
        Self::drain_if_reconnecting(&ctx, &outbox);
        let lifetime = Lifetime::new(
            ctx.identity.expires_at,
            crate::auth::now_unix(),
            ctx.limits.max_session,
        );
        Some(Session {
            ctx,
            me,
            outbox,
            started,
            last_seen: AtomicU64::new(0),
            relays_since_yield: AtomicU32::new(0),
            resend_order: Mutex::default(),
            lifetime,
            claim,
        })
    }

    /// Reads, writes and watches liveness until one of them ends the session.
    async fn serve<S, R>(&self, sink: &mut S, stream: &mut R) -> End
    where
        S: Sink<Message, Error = WriteError> + Unpin,
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        // Liveness is its own branch, not part of the writer: a writer blocked
        // on a peer that stopped reading (full TCP window) must not keep that
        // peer in the room.
        tokio::select! {
            end = self.read_loop(stream) => end,
            end = self.write_loop(sink) => end,
            end = self.watch_liveness() => end,
            why = self.lifetime.expired() => {
                tracing::info!(?why, "session deadline reached");
                End::from(why)
            }
        }
    }

    /// Leaves the room and the bus, then closes the way `end` calls for.
    async fn finish<S, R>(self, end: End, sink: &mut S, stream: &mut R)
    where
        S: Sink<Message> + Unpin,
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let Session {
            ctx, outbox, claim, ..
        } = self;
        // From here on nothing queued would be written: a relay to this
        // participant now gets `target_not_found` instead of vanishing (or,
        // when it may resume, waits in its inbox).
        outbox.seal();

        // With the inboxes in the bus a drained participant resumes on another instance.
        let resumable = end.resumable() || (end == End::Draining && ctx.bus.numbers_deliveries());
        if end == End::Superseded {
            // A resume owns the participant now; this connection just goes.
            tracing::info!("connection taken over by a resume");
            if !ctx.hub.is_local(&ctx.room, &claim.participant_id) {
                // On another instance: this one holds it no longer.
                ctx.bus.release(&ctx.room, &claim.participant_id).await;
            }
        } else if resumable && ctx.resume.enabled() && ctx.hub.detach(&ctx.room, &claim).is_ok() {
            tracing::info!(
                reason = end.metric_label(),
                grace_ms = u64::try_from(ctx.resume.grace.as_millis()).unwrap_or(u64::MAX),
                "connection lost: held for a resume"
            );
            hold_for_resume(&ctx, claim);
        } else {
            // Leave first so the room learns at once, even if the close frame below
            // takes long to reach a peer that is not reading.
            let reason = end.leave_reason();
            // The hub's record is the current one (the server API may have
            // changed its metadata since the join). A resume that took the
            // participant over since owns its leave.
            if let Ok(current) = ctx.hub.leave(&ctx.room, &claim, reason) {
                if let Err(e) = ctx.bus.leave(&ctx.room, &current, reason).await {
                    tracing::warn!(error = %e, "leave not recorded on the bus");
                }
                tracing::info!(reason = end.metric_label(), "left");
            }
        }
        ctx.metrics.connection_closed(end.metric_label());
        if let Some(frame) = end.close_frame() {
            // The client should see what was queued (errors, relays) before
            // its close frame.
            let pending = if matches!(
                end,
                End::TooBig | End::RateLimited | End::TokenExpired | End::SessionLimit
            ) {
                outbox.take_all()
            } else {
                Vec::new()
            };
            close_handshake(
                sink,
                stream,
                pending,
                frame,
                end.after_close(),
                ctx.limits.close_timeout,
            )
            .await;
        }
    }

    /// Notes that the peer was heard from at `now` (any frame counts, pongs included).
    fn mark_seen_at(&self, now: Instant) {
        self.last_seen
            .store(millis_between(self.started, now), Ordering::Relaxed);
    }

    fn resend_order(&self) -> MutexGuard<'_, ResendOrder> {
        self.resend_order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an `error` answering the client message with `seq`.
    fn reply_error_for(&self, code: ErrorCode, message: &str, seq: Option<u64>) {
        self.ctx.metrics.error(code.as_str());
        if let Some(seq) = seq {
            self.resend_order()
                .answered(seq, resend_order::client_resends(code));
        }
        self.outbox.push(
            protocol::encode_error_for(self.ctx.room.as_str(), code, message, seq),
            Delivery::Droppable,
        );
    }

    /// Queues the `ack` of the client message with `seq`, if it had one. Dropped when the
    /// queue is full, like any reply: the client then sends the message again and its
    /// recipients drop the duplicate.
    fn ack(&self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.resend_order().answered(seq, false);
            self.outbox.push(
                protocol::encode_ack(self.ctx.room.as_str(), seq),
                Delivery::Droppable,
            );
        }
    }

    async fn read_loop<R>(&self, stream: &mut R) -> End
    where
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let mut in_flight = InFlight::default();
        let end = self.read_messages(stream, &mut in_flight).await;
        // What was read is delivered, or refused, before the reader ends (when the writer,
        // liveness or the deadline ends the session first, the client gets no answer for
        // what was still waiting, and sends it again after a resume).
        loop {
            self.send_next_batch(&mut in_flight);
            if in_flight.is_empty() {
                break;
            }
            for reply in in_flight.next().await {
                self.send_reply(reply);
            }
        }
        end
    }

    async fn read_messages<'a, R>(&'a self, stream: &mut R, in_flight: &mut InFlight<'a>) -> End
    where
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let limits = &self.ctx.limits;
        let mut limiter = RateLimiter::new(
            RateLimits {
                messages_per_second: limits.rate_limit_per_second,
                message_burst: limits.rate_limit_burst,
                bytes_per_second: limits.rate_limit_bytes_per_second,
                byte_burst: limits.rate_limit_bytes_burst,
            },
            Instant::now().into_std(),
        );
        loop {
            self.send_next_batch(in_flight);
            let item = if in_flight.is_full() {
                // The next message waits for the batch with the bus to be answered.
                for reply in in_flight.next().await {
                    self.send_reply(reply);
                }
                continue;
            } else if !in_flight.is_sending() {
                stream.next().await
            } else {
                tokio::select! {
                    biased;
                    replies = in_flight.next() => {
                        for reply in replies {
                            self.send_reply(reply);
                        }
                        continue;
                    }
                    item = stream.next() => item,
                }
            };
            let Some(item) = item else {
                return End::ClientClosed;
            };
            // One clock read per message serves the liveness mark and both
            // rate checks (it was four per relayed message).
            let now = Instant::now();
            self.mark_seen_at(now);
            let text = match item {
                Err(ReadError::TooBig) => return End::TooBig,
                Err(ReadError::Protocol) => return End::Protocol,
                Err(ReadError::InvalidUtf8) => return End::InvalidUtf8,
                Err(ReadError::Transport) => return End::Transport,
                Ok(Message::Close(_)) => return End::ClientClosed,
                // Raw frames are for writing; reads never yield one.
                Ok(Message::Frame(_)) => continue,
                Ok(Message::Ping(_) | Message::Pong(_)) => {
                    // Control frames cost the server as much as messages (each
                    // ping makes the transport queue a pong), so they spend the
                    // same budget; over it they earn no reply, only the close.
                    if limiter.check(now.into_std()) == Verdict::Abuse {
                        return End::RateLimited;
                    }
                    continue;
                }
                Ok(Message::Binary(data)) => {
                    if data.len() > limits.max_message_bytes {
                        return End::TooBig;
                    }
                    Err(data.len())
                }
                Ok(Message::Text(text)) => {
                    if text.len() > limits.max_message_bytes {
                        return End::TooBig;
                    }
                    Ok(text)
                }
            };
            self.ctx.metrics.message_received(match &text {
                Ok(t) => t.len(),
                Err(n) => *n,
            });
            match limiter.check(now.into_std()) {
                Verdict::Allow => {}
                Verdict::Reject => {
                    let seq = text
                        .as_ref()
                        .ok()
                        .and_then(|t| protocol::peek_seq(t.as_str()));
                    self.reply(
                        in_flight,
                        error(
                            ErrorCode::RateLimited,
                            "rate limit exceeded; message not relayed",
                            seq,
                        ),
                    );
                    continue;
                }
                Verdict::Abuse => return End::RateLimited,
            }
            match text {
                Ok(text) => {
                    if let Err(end) = self
                        .handle_text(text.as_str(), &mut limiter, now, in_flight)
                        .await
                    {
                        return end;
                    }
                }
                Err(_) => self.reply(
                    in_flight,
                    error(
                        ErrorCode::InvalidMessage,
                        "binary frames are not supported; send JSON text",
                        None,
                    ),
                ),
            }
        }
    }

    /// Decodes one client message that passed the size and rate checks and
    /// acts on it; `Err` ends the session (a relay over the byte budget once
    /// too often).
    async fn handle_text<'a>(
        &'a self,
        text: &str,
        limiter: &mut RateLimiter,
        arrived: Instant,
        in_flight: &mut InFlight<'a>,
    ) -> Result<(), End> {
        let ctx = &self.ctx;
        let msg = match protocol::decode_client(text, ctx.limits.max_json_depth) {
            Ok(m) => m,
            Err(e) => {
                self.reply(in_flight, error(e.code, e.message, e.seq));
                return Ok(());
            }
        };
        match msg {
            ClientMessage::Ping { payload } => self.reply(
                in_flight,
                Reply::Frame(protocol::encode_pong(ctx.room.as_str(), payload)),
            ),
            ClientMessage::RefreshToken { token } => {
                let reply = self.refresh(&token);
                self.reply(in_flight, reply);
            }
            ClientMessage::Relay {
                kind,
                to,
                payload,
                seq,
            } => {
                // A relay through a numbering bus is checked when its batch goes out: the
                // held seq may be in flight again, re-sent just before it.
                let held = if ctx.bus.numbers_deliveries() {
                    None
                } else {
                    self.resend_order().waiting_for(seq)
                };
                if let Some(held) = held {
                    // Relaying it now would put it ahead of `held` at its recipients.
                    self.reply(
                        in_flight,
                        error(ErrorCode::BusUnavailable, resend_first(held), seq),
                    );
                    return Ok(());
                }
                if to.as_deref() == Some(self.me.participant_id.as_str()) {
                    // Signaling with yourself is a client bug; echoing it
                    // back would only hide it.
                    self.reply(
                        in_flight,
                        error(
                            ErrorCode::InvalidMessage,
                            "`to` names yourself; address another participant",
                            seq,
                        ),
                    );
                    return Ok(());
                }
                let frame = protocol::encode_relay(
                    kind,
                    payload,
                    &self.me.participant_id,
                    ctx.room.as_str(),
                    to.as_deref(),
                );
                // What the room pays for it: one copy per recipient.
                let recipients = if to.is_some() {
                    1
                } else {
                    ctx.hub.member_count(&ctx.room).saturating_sub(1)
                };
                let cost = ratelimit::delivery_cost(frame.len(), recipients);
                match limiter.check_delivery(cost, arrived.into_std()) {
                    Verdict::Allow => {}
                    Verdict::Reject => {
                        self.reply(
                            in_flight,
                            error(
                                ErrorCode::RateLimited,
                                "byte rate limit exceeded (message size x recipients); message not relayed",
                                seq,
                            ),
                        );
                        return Ok(());
                    }
                    Verdict::Abuse => return Err(End::RateLimited),
                }
                if ctx.bus.numbers_deliveries() {
                    let relay = self.relay_message(kind, to, seq, frame);
                    self.deliver_through_bus(relay, in_flight);
                    return Ok(());
                }
                let relay = RelayRef {
                    room_id: &ctx.room,
                    kind,
                    sender_id: &self.me.participant_id,
                    to: to.as_deref(),
                    sender_seq: seq,
                    frame: &frame,
                };
                let reply = match ctx.hub.relay_local(relay) {
                    Route::LocalOnly => Reply::Ack(seq),
                    Route::TargetNotFound => error(
                        ErrorCode::TargetNotFound,
                        "no participant with that id in this room",
                        seq,
                    ),
                    Route::Publish => match ctx
                        .bus
                        .publish(self.relay_message(kind, to, seq, frame))
                        .await
                    {
                        Ok(()) => Reply::Ack(seq),
                        Err(e @ BusError::DeliveryUnknown { .. }) => {
                            tracing::warn!(error = %e, kind = kind.as_str(), "relay not confirmed by the bus");
                            // With a seq, sending it again is safe: recipients drop the
                            // duplicate by (sender, seq).
                            error(
                                ErrorCode::DeliveryUnknown,
                                "the other servers may or may not have received this message; resend it with the same seq, or do not resend signaling blindly",
                                seq,
                            )
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, kind = kind.as_str(), "relay not published");
                            error(
                                ErrorCode::BusUnavailable,
                                "message could not be delivered to other servers; retry",
                                seq,
                            )
                        }
                    },
                };
                self.reply(in_flight, reply);
                // Many messages arrive in one socket read; yielding every few
                // relays lets the recipients' writers run, so a burst from
                // several senders does not outrun a reader that keeps up. Not
                // after each one: a writer woken for every single frame makes one
                // write system call per frame (strace: 11,978 `sendto` for 12,000
                // relayed messages, against 414 for the ceiling relay).
                let relayed = self.relays_since_yield.load(Ordering::Relaxed) + 1;
                if relayed >= RELAYS_PER_YIELD {
                    self.relays_since_yield.store(0, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                } else {
                    self.relays_since_yield.store(relayed, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// The relay as it goes to the bus (a local relay is delivered from a borrowed
    /// [`RelayRef`], without these copies of the ids).
    fn relay_message(
        &self,
        kind: RelayKind,
        to: Option<Cow<'_, str>>,
        sender_seq: Option<u64>,
        frame: Frame,
    ) -> RelayMessage {
        RelayMessage {
            room_id: self.ctx.room.clone(),
            kind,
            sender_id: self.me.participant_id.clone(),
            to: to.map(Cow::into_owned),
            sender_seq,
            seqs: None,
            frame,
        }
    }

    /// A relay through a bus that numbers deliveries: every recipient, local or not, gets it
    /// from the bus with its seq. It goes out with the next batch ([`InFlight`]) and is
    /// answered when the bus has answered that batch.
    fn deliver_through_bus<'a>(&'a self, relay: RelayMessage, in_flight: &mut InFlight<'a>) {
        let seq = relay.sender_seq;
        let Some(recipients) = self.ctx.hub.recipients(&relay) else {
            self.reply(
                in_flight,
                error(
                    ErrorCode::TargetNotFound,
                    "no participant with that id in this room",
                    seq,
                ),
            );
            return;
        };
        if recipients.is_empty() {
            self.reply(in_flight, Reply::Ack(seq));
            return;
        }
        in_flight.push(RelayDelivery {
            message: relay,
            recipients,
            follows: None,
        });
    }

    /// Sends the relays read since the last batch, once that batch is answered and its
    /// answers went to the client: one read before them but behind a seq the client must now
    /// send again is refused here, as it would be had it been read after the answer.
    fn send_next_batch<'a>(&'a self, in_flight: &mut InFlight<'a>) {
        let Some(batch) = in_flight.next_batch() else {
            return;
        };
        let kinds: Vec<_> = batch
            .iter()
            .map(|d| (d.message.sender_seq, d.message.kind))
            .collect();
        let held = self.resend_order().held();
        let (send, plans) = in_flight::plan(batch, held);
        let follows: Vec<_> = send.iter().map(|d| d.follows).collect();
        let bus = &self.ctx.bus;
        in_flight.sending(Box::pin(async move {
            let outcomes = if send.is_empty() {
                Vec::new()
            } else {
                bus.deliver(send).await
            };
            in_flight::answers(kinds, plans, outcomes.into_iter().zip(follows))
        }));
    }

    /// Replies to a client message now, or after the replies to the deliveries still in
    /// flight before it: the client gets its answers in the order it sent the messages.
    fn reply<'a>(&'a self, in_flight: &mut InFlight<'a>, reply: Reply) {
        if let Some(reply) = in_flight.behind(reply) {
            self.send_reply(reply);
        }
    }

    /// Queues a reply whose turn has come.
    fn send_reply(&self, reply: Reply) {
        match reply {
            Reply::Ack(seq) => self.ack(seq),
            Reply::Error { code, message, seq } => self.reply_error_for(code, &message, seq),
            Reply::Frame(frame) => {
                self.outbox.push(frame, Delivery::Droppable);
            }
            Reply::Delivery(answer) => self.answer(answer),
        }
    }

    /// Answers the client message a delivery came from.
    fn answer(&self, answer: Answer) {
        let Answer {
            seq,
            kind,
            behind,
            outcome,
        } = answer;
        match outcome {
            Ok(Delivered::Sent) => self.ack(seq),
            Ok(Delivered::Duplicate) => {
                self.ctx.metrics.duplicate_dropped();
                self.ack(seq);
            }
            Ok(Delivered::Behind) => self.reply_error_for(
                ErrorCode::BusUnavailable,
                &behind.map_or_else(
                    || "an earlier message was not delivered; send it again first".to_owned(),
                    resend_first,
                ),
                seq,
            ),
            Err(e @ BusError::DeliveryUnknown { .. }) => {
                tracing::warn!(error = %e, kind = kind.as_str(), "relay not confirmed by the bus");
                self.reply_error_for(
                    ErrorCode::DeliveryUnknown,
                    "the bus may or may not have taken this message; resend it with the same seq",
                    seq,
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = kind.as_str(), "relay not delivered");
                self.reply_error_for(
                    ErrorCode::BusUnavailable,
                    "message could not be delivered; retry",
                    seq,
                );
            }
        }
    }

    /// `refresh-token`: a valid token for the same user and room moves the
    /// session's deadline to its `exp`; anything else is refused with an
    /// error code and changes nothing.
    fn refresh(&self, token: &str) -> Reply {
        let ctx = &self.ctx;
        match ctx
            .auth
            .verify_refresh(token, &ctx.identity.user_id, &ctx.room)
        {
            Ok(identity) => {
                self.lifetime.refresh(identity.expires_at);
                tracing::info!(expires_at = identity.expires_at, "token refreshed");
                let resume_token = ctx.resume.enabled().then(|| {
                    ctx.resume.issue(
                        &self.me.participant_id,
                        &ctx.room,
                        &self.me.user_id,
                        identity.expires_at,
                    )
                });
                if let Some(token) = &resume_token {
                    ctx.hub.set_resume_token(&ctx.room, &self.claim, token);
                }
                Reply::Frame(protocol::encode_token_refreshed(
                    ctx.room.as_str(),
                    identity.expires_at,
                    resume_token.as_deref(),
                ))
            }
            Err(e) => {
                tracing::info!(reason = %e, "token refresh refused");
                error(
                    e.error_code(),
                    "token not accepted; the session still ends when the current token expires",
                    None,
                )
            }
        }
    }

    /// Completes with [`End::Timeout`] once the peer has been silent (no
    /// frame, no pong) for longer than [`is_dead`] allows. Runs beside the
    /// writer, so it fires even while the writer is blocked on a full socket.
    async fn watch_liveness(&self) -> End {
        let limits = &self.ctx.limits;
        let interval = limits.ping_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = LivenessWatch::default();
        loop {
            let due = tick.tick().await;
            let late = Instant::now().saturating_duration_since(due);
            let seen = self.last_seen.load(Ordering::Relaxed);
            if !watch.is_dead(limits, seen, millis_since(self.started), late) {
                continue;
            }
            // The reader runs in this task's select: let it take what is
            // already waiting in the socket (a pong that arrived while this
            // process was not running) before the verdict.
            tokio::task::yield_now().await;
            let seen = self.last_seen.load(Ordering::Relaxed);
            if is_dead(limits, seen, millis_since(self.started)) {
                tracing::info!("peer silent past the ping timeout");
                return End::Timeout;
            }
        }
    }

    async fn write_loop<S>(&self, sink: &mut S) -> End
    where
        S: Sink<Message, Error = WriteError> + Unpin,
    {
        let outbox = &self.outbox;
        let interval = self.ctx.limits.ping_interval;
        // A write that blocks this long means the peer takes nothing: one
        // that keeps sending (pings, say) never trips the liveness watch.
        let stall = self.ctx.limits.ping_timeout;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                next = outbox.next() => match next {
                    Next::Frame(frame) => text_message(frame),
                    Next::Close(cause) => return End::from(cause),
                    Next::Resync => {
                        self.ctx.hub.resync(&self.ctx.room, &self.me.participant_id);
                        continue;
                    }
                },
                _ = ping.tick() => Message::Ping(bytes::Bytes::from_static(b"sb")),
            };
            // A peer that stops reading blocks this send; overflow of its queue
            // must still end the session at once.
            // Frames already queued go out in the same write: one flush per
            // batch lets an active reader keep up with a burst from the room.
            let batch = async {
                feed_within(stall, sink, message).await?;
                for _ in 0..WRITE_BATCH {
                    match outbox.try_pop() {
                        Some(frame) => feed_within(stall, sink, text_message(frame)).await?,
                        None => break,
                    }
                }
                flush_within(stall, sink).await
            };
            let stuck = async {
                match outbox.closing().await {
                    CloseCause::SlowConsumer => End::SlowConsumer,
                    cause => {
                        // A healthy writer finishes its batch (and then sends
                        // the queued `reconnect`) long before this; a blocked
                        // one must not keep the participant in the room.
                        tokio::time::sleep(DRAIN_STUCK_GRACE).await;
                        End::from(cause)
                    }
                }
            };
            // Boxed: the two futures and their timers would otherwise be part of every
            // session's future for its whole life, idle or not (one allocation per batch).
            let written = Box::pin(async {
                tokio::select! {
                    sent = batch => sent,
                    end = stuck => Err(end),
                }
            });
            if let Err(end) = written.await {
                return end;
            }
        }
    }
}

/// Queues one frame on the socket's sink, waiting at most `stall` for room in its buffer.
async fn feed_within<S>(stall: Duration, sink: &mut S, message: Message) -> Result<(), End>
where
    S: Sink<Message, Error = WriteError> + Unpin,
{
    write_within(stall, std::future::poll_fn(|cx| sink.poll_ready_unpin(cx))).await?;
    sink.start_send_unpin(message).map_err(write_failed)
}

/// Flushes the socket's sink, waiting at most `stall`.
async fn flush_within<S>(stall: Duration, sink: &mut S) -> Result<(), End>
where
    S: Sink<Message, Error = WriteError> + Unpin,
{
    write_within(stall, std::future::poll_fn(|cx| sink.poll_flush_unpin(cx))).await
}

/// One step of a write (room in the sink's buffer, or a flush), bounded by `stall`: one that
/// cannot finish for that long means the peer takes nothing, and it is closed as a slow
/// consumer, like a reader whose queue overflows. The timer is armed only when the step
/// would block: a tokio timeout reads the clock and takes a handle on the runtime's timer,
/// and nearly every step completes at once. (Polling a readiness or flush step again is
/// harmless; each frame is handed over once, by `start_send`.)
async fn write_within<F>(stall: Duration, step: F) -> Result<(), End>
where
    F: std::future::Future<Output = Result<(), WriteError>>,
{
    let mut step = std::pin::pin!(step);
    if let Some(done) = (&mut step).now_or_never() {
        return done.map_err(write_failed);
    }
    match tokio::time::timeout(stall, step).await {
        Ok(done) => done.map_err(write_failed),
        Err(_) => {
            tracing::info!("peer does not read: write blocked past the ping timeout");
            Err(End::SlowConsumer)
        }
    }
}

fn write_failed(e: WriteError) -> End {
    match e {
        WriteError::Closed => End::Transport,
        WriteError::BufferFull => {
            tracing::info!("peer does not read: write buffer full");
            End::SlowConsumer
        }
    }
}

/// The liveness watch's memory between ticks: after a stall of this process
/// the peer gets a fresh ping timeout before it can be judged. Pure, so the
/// rule is tested without a clock.
#[derive(Debug, Default)]
struct LivenessWatch {
    /// No verdict before this (milliseconds since the session started).
    grace_until_ms: u64,
}

impl LivenessWatch {
    /// Whether the peer counts as dead at a tick that ran `late` after it was
    /// due: never on a late tick (this process was not running, so neither
    /// our pings nor the peer's answers moved), nor within the ping timeout
    /// after one; otherwise by [`is_dead`].
    fn is_dead(&mut self, limits: &Limits, last_seen_ms: u64, now_ms: u64, late: Duration) -> bool {
        if late > STALL_SLACK {
            let timeout_ms = u64::try_from(limits.ping_timeout.as_millis()).unwrap_or(u64::MAX);
            self.grace_until_ms = now_ms.saturating_add(timeout_ms);
            return false;
        }
        now_ms >= self.grace_until_ms && is_dead(limits, last_seen_ms, now_ms)
    }
}

/// An `error` reply answering the client message with `seq`.
fn error(code: ErrorCode, message: impl Into<Cow<'static, str>>, seq: Option<u64>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
        seq,
    }
}

/// Why a seq is refused while an earlier one waits for its re-send.
fn resend_first(held: u64) -> String {
    format!("seq {held} was not delivered; send it again first, then this one")
}

fn millis_since(started: Instant) -> u64 {
    millis_between(started, Instant::now())
}

fn millis_between(started: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(started).as_millis()).unwrap_or(u64::MAX)
}

/// Whether a peer last heard from at `last_seen_ms` (since the session
/// started) is dead at `now_ms`: silent for longer than one ping interval plus
/// the ping timeout.
fn is_dead(limits: &Limits, last_seen_ms: u64, now_ms: u64) -> bool {
    let dead_after =
        u64::try_from((limits.ping_interval + limits.ping_timeout).as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(last_seen_ms) > dead_after
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
