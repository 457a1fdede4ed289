//! Room logic on top of the event graph: the room writer (local sends and received events,
//! serialised per room), creating rooms, membership changes, visibility.

pub mod acl;
pub mod aliases;
pub mod checks;
pub mod client_format;
pub mod create;
pub mod directory;
pub mod filter;
pub mod for_servers;
pub mod hierarchy;
pub mod history;
pub mod membership;
pub mod out_of_band;
pub mod power;
pub mod relations;
pub mod reports;
pub mod search;
pub mod steps;
pub mod templates;
pub mod timeline;
pub mod turns;
pub mod upgrade;
pub mod user_directory;
pub mod visibility;
pub mod writer;

pub use writer::{notify_committed, send, send_in_tx, Sent};

use std::{collections::BTreeMap, sync::Arc};

use ruma::{room_version_rules::RoomVersionRules, serde::Base64, signatures::PublicKeyMap};
use sqlx::AnyConnection;

use crate::{
    events::{rules_for, Pdu, StateMap},
    storage::{events, rooms, state as state_store},
    Core, Error, Result,
};

/// The public keys that verify this server's own events.
pub fn own_keys(core: &Core) -> PublicKeyMap {
    let mut set = BTreeMap::new();
    set.insert(
        core.key.key_id.clone(),
        Base64::new(core.key.keypair.public_key().to_vec()),
    );
    let mut map = PublicKeyMap::new();
    map.insert(core.server_name.to_string(), set);
    map
}

/// The room version's rules, or NotFound for an unknown room.
pub async fn room_rules(core: &Core, conn: &mut AnyConnection, room_id: &str) -> Result<(String, RoomVersionRules)> {
    let version = rooms::version(&core.db, conn, room_id)
        .await?
        .ok_or_else(|| Error::NotFound("Unknown room".into()))?;
    let rules = rules_for(&version)?;
    Ok((version, rules))
}

/// The room's current state.
pub async fn current_state(core: &Core, conn: &mut AnyConnection, room_id: &str) -> Result<Arc<StateMap>> {
    let group = rooms::current_state_group(conn, room_id).await?;
    state_store::load_or_empty(&core.db, conn, group).await
}

/// Loads a stored event as a PDU with its room's rules.
pub async fn load_pdu(
    core: &Core,
    conn: &mut AnyConnection,
    event_id: &str,
) -> Result<Option<(events::StoredEvent, Pdu, RoomVersionRules)>> {
    let Some(stored) = events::get(conn, event_id).await? else {
        return Ok(None);
    };
    let (_, rules) = room_rules(core, conn, &stored.room_id).await?;
    let pdu = Pdu::from_stored(&stored.event_id, &stored.json, &rules)?;
    Ok(Some((stored, pdu, rules)))
}

/// Content of one piece of current state.
pub async fn current_state_content(
    conn: &mut AnyConnection,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> Result<Option<serde_json::Value>> {
    let Some(id) = rooms::current_state_event(conn, room_id, event_type, state_key).await? else {
        return Ok(None);
    };
    let Some(stored) = events::get(conn, &id).await? else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&stored.json).unwrap_or_default();
    Ok(Some(json["content"].clone()))
}
