//! Power levels as the auth rules read them, for the checks the server makes itself
//! (redactions, state a client may send, directory and alias permissions).

use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;
use sqlx::AnyConnection;

use crate::{events::StateMap, storage::events, Result};

async fn state_content(
    conn: &mut AnyConnection,
    state: &StateMap,
    event_type: &str,
) -> Result<Option<(String, Value)>> {
    let Some(id) = state.get(&(event_type.to_owned(), String::new())) else {
        return Ok(None);
    };
    let Some(stored) = events::get(conn, id).await? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&stored.json).unwrap_or_default();
    Ok(Some((stored.sender, json["content"].clone())))
}

fn as_level(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Whether the user is one of the room's creators with unlimited power (v12).
async fn is_privileged_creator(
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    state: &StateMap,
    user: &str,
) -> Result<bool> {
    if !rules.authorization.explicitly_privilege_room_creators {
        return Ok(false);
    }
    let Some((sender, content)) = state_content(conn, state, "m.room.create").await? else {
        return Ok(false);
    };
    Ok(sender == user
        || content["additional_creators"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(user))))
}

/// A user's power level in `state`.
pub async fn user_level(
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    state: &StateMap,
    user: &str,
) -> Result<i64> {
    if is_privileged_creator(conn, rules, state, user).await? {
        return Ok(i64::MAX);
    }
    match state_content(conn, state, "m.room.power_levels").await? {
        Some((_, pl)) => Ok(pl["users"]
            .get(user)
            .and_then(as_level)
            .or_else(|| as_level(&pl["users_default"]))
            .unwrap_or(0)),
        None => {
            let creator = state_content(conn, state, "m.room.create").await?.map(|(s, c)| {
                if rules.authorization.use_room_create_sender {
                    s
                } else {
                    c["creator"].as_str().unwrap_or(&s).to_owned()
                }
            });
            Ok(if creator.as_deref() == Some(user) { 100 } else { 0 })
        }
    }
}

/// The level an action (`ban`, `kick`, `redact`, `invite`) needs.
pub async fn action_level(
    conn: &mut AnyConnection,
    _rules: &RoomVersionRules,
    state: &StateMap,
    action: &str,
) -> Result<i64> {
    let default = if action == "invite" { 0 } else { 50 };
    Ok(state_content(conn, state, "m.room.power_levels")
        .await?
        .and_then(|(_, pl)| as_level(&pl[action]))
        .unwrap_or(default))
}

/// The level needed to send an event of this type (state or not).
pub async fn event_level(
    conn: &mut AnyConnection,
    _rules: &RoomVersionRules,
    state: &StateMap,
    event_type: &str,
    is_state: bool,
) -> Result<i64> {
    match state_content(conn, state, "m.room.power_levels").await? {
        Some((_, pl)) => Ok(pl["events"].get(event_type).and_then(as_level).unwrap_or_else(|| {
            if is_state {
                as_level(&pl["state_default"]).unwrap_or(50)
            } else {
                as_level(&pl["events_default"]).unwrap_or(0)
            }
        })),
        None => Ok(0),
    }
}
