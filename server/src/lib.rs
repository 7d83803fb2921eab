//! Switchboard signaling server.
