//! The event graph: PDUs, building local events, state snapshots and resolution, and the one
//! pipeline every PDU takes, local or remote.

pub mod auth_chain;
pub mod builder;
pub mod cache;
pub mod pdu;
pub mod pipeline;
pub mod state;

pub use pdu::Pdu;

/// Room state as `(event type, state key) -> event ID`. A persistent map: a copy costs nothing
/// and the state after an event shares all but one path of nodes with the state before it, so
/// adding a member to a room of thousands neither copies its state nor stores it twice in the
/// state cache.
pub type StateMap = imbl::OrdMap<(String, String), String>;

/// The rules of a room version this server supports.
pub fn rules_for(version: &str) -> crate::Result<ruma::room_version_rules::RoomVersionRules> {
    ruma::RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| crate::Error::UnsupportedRoomVersion(version.to_owned()))
}
