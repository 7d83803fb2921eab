//! Fixtures shared by the unit tests of this crate. Tokens come from the workspace's one test
//! token minter, `switchboard_e2e::token`.

use crate::room::ParticipantInfo;

/// When every fixture participant joined, unless a test sets its own `joined_at`.
pub(crate) const JOINED_AT: &str = "2026-11-28T16:30:27.123Z";

/// Participant `id` (user `user-<id>`, name `User <id>`) held by instance `instance`; tests
/// that need other fields use struct update syntax: `ParticipantInfo { joined_at, ..participant(..) }`.
pub(crate) fn participant(id: &str, instance: &str) -> ParticipantInfo {
    ParticipantInfo {
        participant_id: id.into(),
        user_id: format!("user-{id}"),
        username: format!("User {id}"),
        joined_at: JOINED_AT.into(),
        instance_id: instance.into(),
        metadata: None,
    }
}
