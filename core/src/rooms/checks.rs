//! What the server checks of a client's event before building it, where the auth rules would
//! accept an event that does nothing or that clients could not read: malformed content of
//! known state types, redactions the sender may not apply, and state that would not change.

use ruma::{
    events::room::{
        encryption::RoomEncryptionEventContent, guest_access::RoomGuestAccessEventContent,
        history_visibility::RoomHistoryVisibilityEventContent, join_rules::RoomJoinRulesEventContent,
        name::RoomNameEventContent, power_levels::RoomPowerLevelsEventContent, topic::RoomTopicEventContent,
    },
    UserId,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::AnyConnection;

use super::{current_state, power, room_rules, Sent};
use crate::{
    events::builder::EventTemplate,
    storage::{events, rooms},
    Core, Error, Result,
};

/// Checks a client's event before it is built. `Some` is the current state event that `template`
/// would repeat (same type, state key, sender and content): it is the answer, and nothing is
/// written, so a client retrying a state change or a join does not grow the room.
pub async fn before_send(
    core: &Core,
    room_id: &str,
    sender: &UserId,
    template: &EventTemplate,
) -> Result<Option<Sent>> {
    if let Some(target) = &template.redacts {
        let mut conn = core.db.conn().await?;
        check_redaction(core, &mut conn, room_id, sender, target).await?;
        return Ok(None);
    }
    let Some(state_key) = &template.state_key else {
        return Ok(None);
    };
    check_state_content(&template.kind, &template.content)?;
    let mut conn = core.db.conn().await?;
    unchanged_state(&mut conn, room_id, sender, template, state_key).await
}

/// Known state types must have the content their spec defines: a client that sent
/// `{"name": 5}` would otherwise break every client reading the room.
fn check_state_content(kind: &str, content: &Value) -> Result<()> {
    match kind {
        "m.room.name" => parses::<RoomNameEventContent>(kind, content),
        "m.room.topic" => parses::<RoomTopicEventContent>(kind, content),
        "m.room.join_rules" => parses::<RoomJoinRulesEventContent>(kind, content),
        "m.room.history_visibility" => parses::<RoomHistoryVisibilityEventContent>(kind, content),
        "m.room.power_levels" => parses::<RoomPowerLevelsEventContent>(kind, content),
        "m.room.guest_access" => parses::<RoomGuestAccessEventContent>(kind, content),
        "m.room.encryption" => parses::<RoomEncryptionEventContent>(kind, content),
        _ => Ok(()),
    }
}

fn parses<T: DeserializeOwned>(kind: &str, content: &Value) -> Result<()> {
    T::deserialize(content)
        .map(|_| ())
        .map_err(|e| Error::BadJson(format!("Invalid {kind} content: {e}")))
}

/// A redaction must target an event of this room, and one the sender may redact: their own,
/// or anyone's with the redact power level. The auth rules accept a redaction without that
/// power (it is only not applied), which would tell the client it worked.
async fn check_redaction(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    sender: &UserId,
    target: &str,
) -> Result<()> {
    let Some(target) = events::get(conn, target).await? else {
        return Err(Error::NotFound("Event not found".into()));
    };
    if target.room_id != room_id {
        return Err(Error::InvalidParam("Cannot redact an event of another room".into()));
    }
    if target.sender == sender.as_str() {
        return Ok(());
    }
    let (_, rules) = room_rules(core, conn, room_id).await?;
    let state = current_state(core, conn, room_id).await?;
    let level = power::user_level(conn, &rules, &state, sender.as_str()).await?;
    if level < power::action_level(conn, &rules, &state, "redact").await? {
        return Err(Error::Forbidden("You may not redact other users' events".into()));
    }
    Ok(())
}

/// The current state event `template` would repeat, if any.
async fn unchanged_state(
    conn: &mut AnyConnection,
    room_id: &str,
    sender: &UserId,
    template: &EventTemplate,
    state_key: &str,
) -> Result<Option<Sent>> {
    let Some(id) = rooms::current_state_event(conn, room_id, &template.kind, state_key).await? else {
        return Ok(None);
    };
    let Some(current) = events::get(conn, &id).await? else {
        return Ok(None);
    };
    // A redacted event's stored content may not be what clients see of it.
    if current.sender != sender.as_str() || current.redacted_by.is_some() {
        return Ok(None);
    }
    let json: Value = serde_json::from_str(&current.json).map_err(Error::internal)?;
    if json["content"] != template.content {
        return Ok(None);
    }
    Ok(Some(Sent {
        event_id: current.event_id,
        stream_pos: current.stream_pos.unwrap_or_default(),
    }))
}
