//! How many WebSocket connections each user (JWT `sub`) holds on this
//! instance, across all rooms, and the cap on it
//! (`limits.max_user_connections_per_instance`). A connection takes a
//! [`UserConnection`] before its upgrade and gives it back when the guard is
//! dropped, on every exit path (refused join, closed session, failed
//! upgrade), so the count stays exact. The per-room cap is the bus's
//! (cluster-wide, see [`crate::bus::JoinLimits`]); this one bounds what one
//! token can take of a replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections per user on this instance.
#[derive(Debug, Default)]
pub struct UserConnections {
    /// user id → open connections (never 0: emptied entries are removed).
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection of a user; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the slot is freed when the guard is dropped"]
pub struct UserConnection {
    registry: Arc<UserConnections>,
    user: String,
}

impl UserConnections {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn open(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Plain counters: a panic elsewhere cannot leave them half-updated.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `user` if it holds fewer than `cap` connections
    /// (`None` = no cap); `None` when it holds `cap` already.
    pub fn try_open(self: &Arc<Self>, user: &str, cap: Option<usize>) -> Option<UserConnection> {
        let mut open = self.open();
        let held = open.get(user).copied().unwrap_or(0);
        if cap.is_some_and(|cap| held >= cap) {
            return None;
        }
        open.insert(user.to_owned(), held + 1);
        Some(UserConnection {
            registry: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Connections `user` holds on this instance.
    pub fn held(&self, user: &str) -> usize {
        self.open().get(user).copied().unwrap_or(0)
    }

    /// Users with at least one connection.
    pub fn users(&self) -> usize {
        self.open().len()
    }
}

impl Drop for UserConnection {
    fn drop(&mut self) {
        let mut open = self.registry.open();
        if let Some(held) = open.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_per_user_and_a_dropped_guard_frees_its_slot() {
        let reg = UserConnections::new();
        let a1 = reg.try_open("alice", Some(2)).expect("first");
        let a2 = reg.try_open("alice", Some(2)).expect("second");
        assert!(reg.try_open("alice", Some(2)).is_none(), "third refused");
        let b1 = reg.try_open("bob", Some(2)).expect("another user");
        assert_eq!((reg.held("alice"), reg.held("bob")), (2, 1));
        drop(a1);
        assert_eq!(reg.held("alice"), 1);
        let a3 = reg.try_open("alice", Some(2)).expect("a freed slot");
        drop((a2, a3, b1));
        assert_eq!(reg.users(), 0, "emptied users are forgotten");
    }

    #[test]
    fn no_cap_counts_without_refusing() {
        let reg = UserConnections::new();
        let guards: Vec<_> = (0..100)
            .map(|_| reg.try_open("dev", None).expect("uncapped"))
            .collect();
        assert_eq!(reg.held("dev"), 100);
        drop(guards);
        assert_eq!(reg.held("dev"), 0);
    }
}
