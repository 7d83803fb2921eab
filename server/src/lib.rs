//! Switchboard signaling server: rooms over WebSocket, JWT auth, TURN
//! credentials, a pluggable bus for scale-out. `main.rs` is a thin wrapper
//! around [`serve`].
#![forbid(unsafe_code)]

pub mod bus;
pub mod config;
pub mod protocol;
pub mod room;
