//! Outbox bounds, drops and close decisions, without sockets.

use super::*;
use std::sync::Arc;

/// A JSON text frame of about `n` bytes.
pub(crate) fn frame(n: usize) -> Frame {
    Frame::from_json_text(format!("{{\"type\":\"x\",\"pad\":\"{}\"}}", "a".repeat(n)))
}

/// The next frame or close decision if one is ready now.
pub(crate) fn try_next(o: &Outbox) -> Option<Next> {
    futures_util::FutureExt::now_or_never(o.next())
}

#[test]
fn outbox_bounds_messages() {
    let o = Outbox::new(2, 1_000_000);
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Queued);
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Queued);
    // Presence gets headroom up to twice the bound, then is dropped.
    assert_eq!(o.push(frame(1), Delivery::Droppable), Push::Queued);
    assert_eq!(o.push(frame(1), Delivery::Droppable), Push::Queued);
    assert_eq!(o.push(frame(1), Delivery::Droppable), Push::Dropped);
    assert_eq!(o.len(), 4);
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Overflow);
    // A slow consumer is closed at once, queued frames are not flushed.
    assert_eq!(try_next(&o), Some(Next::Close(CloseCause::SlowConsumer)));
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Dropped);
}

#[test]
fn outbox_bounds_bytes_but_always_takes_one() {
    let o = Outbox::new(100, 100);
    let big = frame(200);
    assert_eq!(
        o.push(big.clone(), Delivery::Must),
        Push::Queued,
        "an empty queue takes any frame"
    );
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Overflow);
    assert_eq!(try_next(&o), Some(Next::Close(CloseCause::SlowConsumer)));
    let o = Outbox::new(100, 100);
    assert_eq!(o.push(big.clone(), Delivery::Must), Push::Queued);
    assert_eq!(
        o.push(frame(1), Delivery::Droppable),
        Push::Dropped,
        "over twice the byte bound"
    );
    assert_eq!(try_next(&o), Some(Next::Frame(big)));
    let small = frame(10);
    assert_eq!(o.push(small.clone(), Delivery::Must), Push::Queued);
    assert_eq!(o.push(small.clone(), Delivery::Must), Push::Queued);
    assert_eq!(o.push(frame(30), Delivery::Must), Push::Overflow);
}

#[test]
fn outbox_drain_flushes_then_closes() {
    let o = Outbox::new(1, 1000);
    let a = frame(1);
    o.push(a.clone(), Delivery::Must);
    let last = frame(2);
    o.close_after(Some(last.clone()), CloseCause::Draining);
    assert_eq!(try_next(&o), Some(Next::Frame(a)));
    assert_eq!(try_next(&o), Some(Next::Frame(last)));
    assert_eq!(try_next(&o), Some(Next::Close(CloseCause::Draining)));
    assert_eq!(try_next(&o), Some(Next::Close(CloseCause::Draining)));
}

#[tokio::test]
async fn outbox_wakes_a_waiting_writer() {
    let o = Arc::new(Outbox::new(4, 1000));
    let waiter = tokio::spawn({
        let o = o.clone();
        async move { o.next().await }
    });
    tokio::task::yield_now().await;
    let f = frame(3);
    o.push(f.clone(), Delivery::Must);
    assert_eq!(waiter.await.unwrap(), Next::Frame(f));
}

#[test]
fn a_sealed_outbox_refuses_everything() {
    let o = Outbox::new(4, 1000);
    o.push(frame(1), Delivery::Must);
    o.seal();
    assert_eq!(o.push(frame(1), Delivery::Must), Push::Dropped);
    assert_eq!(o.push(frame(1), Delivery::Droppable), Push::Dropped);
}

#[test]
fn dropped_replies_do_not_ask_for_a_resync_but_dropped_presence_does() {
    let o = Outbox::new(1, 1_000_000);
    for _ in 0..3 {
        o.push(frame(1), Delivery::Droppable);
    }
    while let Some(Next::Frame(_)) = try_next(&o) {}
    assert_eq!(try_next(&o), None, "a dropped pong needs no room-state");
    for _ in 0..3 {
        o.push(frame(1), Delivery::Presence);
    }
    // The resync comes only once the queue has drained, then once.
    assert!(matches!(try_next(&o), Some(Next::Frame(_))));
    assert!(matches!(try_next(&o), Some(Next::Frame(_))));
    assert_eq!(try_next(&o), Some(Next::Resync));
    assert_eq!(try_next(&o), None);
}
