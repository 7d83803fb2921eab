//! Helpers shared by the end-to-end tests: start real processes on ephemeral loopback ports.
