//! A connection's bounded outbound queue: many producers (hub fan-out, the
//! bus, the session's own replies) push frames, the session's writer pops
//! them. It decides what fits, what may be dropped (presence, replies) and
//! when a reader is too slow and must be closed; it does no I/O and knows
//! nothing about rooms.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::protocol::Frame;

/// Why the hub wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// A message that must not be dropped did not fit the queue: close 1013 at once.
    SlowConsumer,
    /// The server is draining: flush the queue (it ends with `reconnect`), then close 1001.
    Draining,
    /// The server API removed the participant: flush the queue, then close 4001 `removed`.
    Removed,
    /// The server API closed the room: flush the queue, then close 4002 `room_closed`.
    RoomClosed,
    /// A resume attached another connection to this participant: close this one (1001
    /// `superseded`) without leaving the room.
    Superseded,
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// A droppable message (presence) did not fit and was dropped, or the
    /// connection's writer has already taken its close (the participant is
    /// leaving and reads nothing more).
    Dropped,
    /// A must-deliver message did not fit: the connection is now marked
    /// [`CloseCause::SlowConsumer`].
    Overflow,
}

/// Whether a message may be dropped for a slow reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Relayed messages: never dropped silently; overflow closes the reader.
    Must,
    /// Replies to the reader itself: dropped when the queue is full.
    Droppable,
    /// Presence (`user-joined`, `user-left`, a re-sent `room-state`): dropped
    /// like [`Delivery::Droppable`], but a drop marks the reader's view of the
    /// room stale, and the writer asks for a fresh `room-state` once the
    /// queue has drained ([`Next::Resync`]).
    Presence,
}

/// What the writer side of a session gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Frame),
    Close(CloseCause),
    /// Presence was dropped for this reader and it has caught up: queue a
    /// fresh `room-state` (`Hub::resync`).
    Resync,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseCause>,
    /// The writer has taken the close decision (or gave up on the socket):
    /// nothing pushed now would ever be written.
    sealed: bool,
    /// A presence update was dropped since the last `room-state`.
    presence_stale: bool,
    /// Frames at the front of the queue that do not count against the bounds (a resume's
    /// replay, [`Outbox::preload`]), and their bytes.
    exempt: usize,
    exempt_bytes: usize,
}

impl OutboxState {
    fn pop(&mut self) -> Option<Frame> {
        let frame = self.queue.pop_front()?;
        self.bytes -= frame.len();
        if self.exempt > 0 {
            self.exempt -= 1;
            self.exempt_bytes -= frame.len();
        }
        Some(frame)
    }
}

/// A per-connection outbound queue bounded in messages and bytes. Many
/// producers (fan-out from any task), one consumer (the session's writer).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    /// Wakes a writer blocked on a socket when its reader is declared slow.
    kill: Notify,
    max_messages: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            kill: Notify::new(),
            max_messages: max_messages.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` if it fits. An empty queue always takes one message, so
    /// a single frame larger than the byte budget still gets through.
    pub fn push(&self, frame: Frame, delivery: Delivery) -> Push {
        let mut st = self.lock();
        // A draining connection keeps taking messages until its writer has
        // flushed the queue and taken the close: during a drain every local
        // outbox is marked at once, and an offer sent in that window must
        // still arrive (after the `reconnect` hint), not vanish.
        if st.sealed || st.close == Some(CloseCause::SlowConsumer) {
            return Push::Dropped;
        }
        // Presence and replies get twice the room: a reader that is only
        // briefly behind should not lose a user-joined; one that stays
        // behind is closed by the next relayed message anyway.
        let factor = match delivery {
            Delivery::Must => 1,
            Delivery::Droppable | Delivery::Presence => 2,
        };
        let (queued, bytes) = (st.queue.len() - st.exempt, st.bytes - st.exempt_bytes);
        let fits = queued == 0
            || (queued < self.max_messages * factor
                && bytes + frame.len() <= self.max_bytes.saturating_mul(factor));
        if fits {
            st.bytes += frame.len();
            st.queue.push_back(frame);
            drop(st);
            self.notify.notify_one();
            return Push::Queued;
        }
        match delivery {
            Delivery::Droppable => Push::Dropped,
            Delivery::Presence => {
                st.presence_stale = true;
                Push::Dropped
            }
            Delivery::Must => {
                st.close = Some(CloseCause::SlowConsumer);
                drop(st);
                self.notify.notify_one();
                self.kill.notify_one();
                Push::Overflow
            }
        }
    }

    /// Queues a last frame regardless of the bounds and marks the outbox
    /// closing with `cause` (used for `reconnect` before a drain close).
    pub fn close_after(&self, frame: Option<Frame>, cause: CloseCause) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        if let Some(frame) = frame {
            st.bytes += frame.len();
            st.queue.push_back(frame);
        }
        st.close = Some(cause);
        drop(st);
        self.notify.notify_one();
        self.kill.notify_one();
    }

    /// Waits for the next frame to write or the close decision. A slow
    /// consumer is closed at once; a draining one gets its queue first.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut st = self.lock();
                if st.close == Some(CloseCause::SlowConsumer) {
                    st.sealed = true;
                    return Next::Close(CloseCause::SlowConsumer);
                }
                if let Some(frame) = st.pop() {
                    return Next::Frame(frame);
                }
                if let Some(cause) = st.close {
                    st.sealed = true;
                    return Next::Close(cause);
                }
                // Caught up: everything queued has been written, so a
                // room-state queued now is the next thing the reader sees.
                if st.presence_stale {
                    st.presence_stale = false;
                    return Next::Resync;
                }
            }
            // One consumer: `notify_one` stores a permit when nobody waits,
            // so a push between the check above and this await is not lost.
            self.notify.notified().await;
        }
    }

    /// Queues `frames` ahead of everything else and outside the bounds: what a resumed
    /// connection must get first (`room-state` and the replay, bounded by the inbox). Live
    /// traffic queued after them is bounded as usual.
    pub fn preload(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut st = self.lock();
        let mut ahead: VecDeque<Frame> = frames.into_iter().collect();
        for frame in &ahead {
            st.bytes += frame.len();
            st.exempt += 1;
            st.exempt_bytes += frame.len();
        }
        ahead.append(&mut st.queue);
        st.queue = ahead;
        drop(st);
        self.notify.notify_one();
    }

    /// Completes once the outbox is marked closing, with the cause.
    pub async fn closing(&self) -> CloseCause {
        loop {
            if let Some(cause) = self.lock().close {
                return cause;
            }
            self.kill.notified().await;
        }
    }

    /// The next queued frame if there is one and the connection is not
    /// being closed as a slow consumer (never waits).
    pub fn try_pop(&self) -> Option<Frame> {
        let mut st = self.lock();
        if st.close == Some(CloseCause::SlowConsumer) {
            return None;
        }
        st.pop()
    }

    /// Takes every queued frame (used to flush replies such as
    /// `error rate_limited` before a close frame) and refuses further pushes.
    pub fn take_all(&self) -> Vec<Frame> {
        let mut st = self.lock();
        st.bytes = 0;
        st.exempt = 0;
        st.exempt_bytes = 0;
        if st.close.is_none() {
            st.close = Some(CloseCause::Draining);
        }
        st.sealed = true;
        st.queue.drain(..).collect()
    }

    /// Refuses every further push: the session has ended and nothing queued
    /// now would be written. Relays to it then report the target as gone.
    pub fn seal(&self) {
        let mut st = self.lock();
        if st.close.is_none() {
            st.close = Some(CloseCause::Draining);
        }
        st.sealed = true;
    }

    /// Messages currently queued.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
pub(crate) mod tests;
