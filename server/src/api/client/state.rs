//! Room state: `/rooms/{roomId}/state`, and one state event GET/PUT by type and key.

use ruma::{
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    serde::Raw,
};
use serde_json::Value;
use weft_core::{
    events::builder::EventTemplate,
    rooms::{
        self,
        client_format::{self, Viewer},
        visibility,
    },
    storage::{events, rooms as room_store, state as state_store},
};

use super::message::{content_object, parse_event_id};
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma},
    state::AppState,
};

/// The state a user may read: current state while joined (or world-readable), else the state
/// at the moment they left.
async fn readable_state(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    user: &AuthUser,
    room_id: &str,
) -> ApiResult<std::sync::Arc<weft_core::events::StateMap>> {
    rooms::room_rules(&state.core, conn, room_id).await?;
    if visibility::can_read_room(conn, user.user_id.as_str(), room_id).await? {
        return Ok(rooms::current_state(&state.core, conn, room_id).await?);
    }
    let membership = room_store::membership(conn, room_id, user.user_id.as_str()).await?;
    match membership {
        Some(m) if m.membership == "leave" || m.membership == "ban" => {
            let left = events::get(conn, &m.event_id).await?;
            match left.and_then(|e| e.state_after) {
                Some(group) => Ok(state_store::load(&state.db, conn, group).await?),
                None => Err(MatrixError::forbidden("You are not allowed to read this room's state")),
            }
        }
        _ => Err(MatrixError::forbidden("You are not allowed to read this room's state")),
    }
}

pub async fn get_all(
    state: AppState,
    req: Ruma<get_state_events::v3::Request>,
) -> ApiResult<get_state_events::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    let room_state = readable_state(&state, &mut conn, user, req.room_id.as_str()).await?;
    let ids: Vec<String> = room_state.values().cloned().collect();
    let list = events::get_many(&mut conn, &ids).await?;
    let viewer = Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    };
    let formatted = client_format::format(&state.core, &mut conn, &list, Some(viewer)).await?;
    Ok(get_state_events::v3::Response::new(
        formatted
            .into_iter()
            .filter_map(|v| Raw::from_json_string(v.to_string()).ok())
            .collect(),
    ))
}

pub async fn get_one(
    state: AppState,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    let room_state = readable_state(&state, &mut conn, user, req.room_id.as_str()).await?;
    let id = room_state
        .get(&(req.event_type.to_string(), req.state_key.clone()))
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let stored = events::get(&mut conn, id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let viewer = Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    };
    let event = client_format::format_plain(&state.core, &mut conn, &stored, Some(viewer)).await?;
    let wants_event = req.format == get_state_event_for_key::v3::StateEventFormat::Event;
    let body: Value = if wants_event { event } else { event["content"].clone() };
    if !wants_event
        && stored.redacted_by.is_none()
        && body.as_object().is_some_and(|o| o.is_empty())
        && stored.event_type == "m.room.member"
    {
        return Err(MatrixError::not_found("Event not found"));
    }
    let raw = serde_json::value::to_raw_value(&body).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(get_state_event_for_key::v3::Response::new(raw))
}

pub async fn put(state: AppState, req: Ruma<send_state_event::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    user.may_write()?;
    if user.shadow_banned {
        let event_id = super::message::shadow_banned_event_id();
        return Ok(serde_json::json!({ "event_id": event_id }));
    }
    let content = content_object(&req.json_body)?;
    let kind = req.event_type.to_string();
    check_state_send(&state, user, req.room_id.as_str(), &kind, &req.state_key, &content).await?;
    if let Some(delay_ms) = super::delayed_events::requested_delay(&req)? {
        let request = super::delayed_events::Request {
            room_id: req.room_id.as_str(),
            event_type: &kind,
            state_key: Some(&req.state_key),
            content: &content,
            txn_id: None,
            delay_ms,
        };
        let delay_id = super::delayed_events::schedule(&state, user, request).await?;
        return Ok(serde_json::json!({ "delay_id": delay_id }));
    }
    let sent = rooms::send(
        &state.core,
        req.room_id.as_str(),
        &user.user_id,
        EventTemplate::state(&kind, &req.state_key, content),
        None,
    )
    .await?;
    Ok(serde_json::json!({ "event_id": parse_event_id(&sent.event_id)? }))
}

/// What a client may not send as state through this endpoint, now or delayed.
pub async fn check_state_send(
    state: &AppState,
    user: &AuthUser,
    room_id: &str,
    kind: &str,
    state_key: &str,
    content: &Value,
) -> ApiResult<()> {
    if kind == "m.room.member" {
        // Membership goes through the membership endpoints, except a user updating their own
        // profile in the room.
        if state_key != user.user_id.as_str() || content["membership"] != "join" {
            return Err(MatrixError::forbidden(
                "Use the membership endpoints to change membership",
            ));
        }
    }
    if kind == "m.room.create" {
        return Err(MatrixError::forbidden("m.room.create cannot be sent"));
    }
    if kind == "m.room.canonical_alias" {
        check_canonical_alias(state, room_id, content).await?;
    }
    Ok(())
}

/// A canonical alias must be a valid alias that points at this room.
async fn check_canonical_alias(state: &AppState, room_id: &str, content: &Value) -> ApiResult<()> {
    let mut aliases: Vec<&str> = content["alt_aliases"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(a) = content["alias"].as_str() {
        aliases.push(a);
    }
    let mut conn = state.db.conn().await?;
    for alias in aliases {
        if ruma::RoomAliasId::parse(alias).is_err() {
            return Err(MatrixError::invalid_param(format!("{alias} is not a valid room alias")));
        }
        match room_store::alias_get(&mut conn, alias).await? {
            Some((r, _)) if r == room_id => {}
            _ => return Err(MatrixError::bad_alias(format!("{alias} does not point to this room"))),
        }
    }
    Ok(())
}
