//! Helpers shared by the end-to-end tests: start real processes on ephemeral loopback ports.
#![forbid(unsafe_code)]

pub mod attacker;
pub mod browser;
pub mod client;
pub mod http;
pub mod redis;
pub mod redis_cluster;
pub mod server;
pub mod tcp;
pub mod token;
pub mod webhook_receiver;
