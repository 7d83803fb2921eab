//! Drain state shared by the HTTP layer and sessions, and the drain
//! sequence: not ready at once, refuse upgrades, after `drain_delay` send
//! every participant a jittered `reconnect` and close it 1001, then wait
//! until the last session dropped its guard (mini-redis style), bounded by
//! the caller's timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::hub::Hub;

/// Held by every session; the drain is over when all guards are dropped.
#[derive(Debug, Clone)]
pub struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

/// Shared drain state.
#[derive(Debug)]
pub struct Shutdown {
    draining: AtomicBool,
    reconnecting: AtomicBool,
    window: Duration,
    tx: Mutex<Option<mpsc::Sender<()>>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Shutdown {
    pub fn new(window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(1);
        Shutdown {
            draining: AtomicBool::new(false),
            reconnecting: AtomicBool::new(false),
            window,
            tx: Mutex::new(Some(tx)),
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// True from the moment the drain starts: readiness is false and
    /// upgrades are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// True once participants are being told to reconnect; a session that
    /// registers after this point drains itself.
    pub fn is_reconnecting(&self) -> bool {
        self.reconnecting.load(Ordering::SeqCst)
    }

    /// The spread of `reconnect` hints.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A guard for a new session, or `None` once draining finished.
    pub fn guard(&self) -> Option<DrainGuard> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref().map(|tx| DrainGuard { _tx: tx.clone() })
    }

    /// Runs the drain sequence. Returns when every session has ended; the
    /// caller bounds it with the drain timeout.
    pub async fn drain(&self, hub: &Hub, delay: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "draining: readiness is false, new upgrades refused"
        );
        // Give load balancers time to take the endpoint out of rotation.
        tokio::time::sleep(delay).await;
        self.reconnecting.store(true, Ordering::SeqCst);
        let (rooms, participants) = hub.counts();
        tracing::info!(
            rooms,
            participants,
            window_ms = self.window.as_millis() as u64,
            "draining: asking clients to reconnect"
        );
        hub.drain(self.window);
        // Drop our sender; recv() yields None once every guard is gone.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut rx = self.rx.lock().await;
        while rx.recv().await.is_some() {}
        tracing::info!("draining: all sessions closed");
    }
}
