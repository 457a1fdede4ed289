//! Sending messages, redacting, and `/messages` pagination.

use ruma::{
    api::{
        client::{
            message::{get_message_events, send_message_event},
            redact::redact_event,
        },
        Direction,
    },
    serde::Raw,
    OwnedEventId,
};
use serde_json::{json, Value};
use weft_core::{
    events::builder::EventTemplate,
    rooms::{
        self,
        client_format::{self, Viewer},
        timeline,
    },
    storage::events,
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma},
    state::AppState,
};

/// Content must be a JSON object; the spec's size limit applies to the whole PDU.
pub fn content_object(json_body: &Option<Value>) -> ApiResult<Value> {
    match json_body {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(MatrixError::bad_json("Event content must be a JSON object")),
        None => Ok(json!({})),
    }
}

/// # `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
///
/// With `?org.matrix.msc4140.delay=<ms>`, schedules the event instead (a delayed event) and
/// answers its `delay_id`.
pub async fn send(state: AppState, req: Ruma<send_message_event::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    user.may_write()?;
    if user.shadow_banned {
        return Ok(json!({ "event_id": shadow_banned_event_id() }));
    }
    let kind = req.event_type.to_string();
    let template = message_template(&kind, &req.json_body)?;
    if let Some(delay_ms) = super::delayed_events::requested_delay(&req)? {
        let request = super::delayed_events::Request {
            room_id: req.room_id.as_str(),
            event_type: &kind,
            state_key: None,
            content: &template.content,
            txn_id: Some(req.txn_id.as_str()),
            delay_ms,
        };
        let delay_id = super::delayed_events::schedule(&state, user, request).await?;
        return Ok(json!({ "delay_id": delay_id }));
    }
    let event_id = send_with_txn(&state, user, req.room_id.as_str(), template, req.txn_id.as_str()).await?;
    Ok(json!({ "event_id": event_id }))
}

/// A message event of `kind` with the request's body as content.
pub fn message_template(kind: &str, json_body: &Option<Value>) -> ApiResult<EventTemplate> {
    let content = content_object(json_body)?;
    let mut template = EventTemplate::message(kind, content);
    if kind == "m.room.redaction" {
        // Core checks the target of a redaction it knows as one.
        let target = template.content["redacts"]
            .as_str()
            .ok_or_else(|| MatrixError::bad_json("m.room.redaction needs content.redacts"))?;
        template.redacts = Some(target.to_owned());
    }
    Ok(template)
}

/// Sends as the user's device, idempotent per transaction ID.
async fn send_with_txn(
    state: &AppState,
    user: &AuthUser,
    room_id: &str,
    template: EventTemplate,
    txn_id: &str,
) -> ApiResult<OwnedEventId> {
    let txn = Some((user.user_id.as_str(), user.device_id.as_str(), txn_id));
    let sent = rooms::send(&state.core, room_id, &user.user_id, template, txn).await?;
    parse_event_id(&sent.event_id)
}

/// What a shadow-banned user's send answers: an event ID like a real one, of an event that
/// was never sent (Synapse's shadow-ban: the user sees no sign of it).
pub fn shadow_banned_event_id() -> OwnedEventId {
    let id = format!("${}", weft_core::util::random_string(43));
    OwnedEventId::try_from(id).expect("a sigil and alphanumerics make an event ID")
}

pub fn parse_event_id(id: &str) -> ApiResult<OwnedEventId> {
    OwnedEventId::try_from(id).map_err(|_| MatrixError::unknown("Invalid event ID"))
}

pub async fn redact(state: AppState, req: Ruma<redact_event::v3::Request>) -> ApiResult<redact_event::v3::Response> {
    let user = req.sender()?;
    user.may_write()?;
    if user.shadow_banned {
        return Ok(redact_event::v3::Response::new(shadow_banned_event_id()));
    }
    let mut content = json!({});
    if let Some(reason) = &req.reason {
        content["reason"] = json!(reason);
    }
    let template = EventTemplate {
        kind: "m.room.redaction".into(),
        state_key: None,
        content,
        redacts: Some(req.event_id.to_string()),
    };
    let event_id = send_with_txn(&state, user, req.room_id.as_str(), template, req.txn_id.as_str()).await?;
    Ok(redact_event::v3::Response::new(event_id))
}

/// # `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn messages(
    state: AppState,
    req: Ruma<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
    let user = req.sender()?;
    let room_id = req.room_id.as_str();
    let core = &state.core;
    let dir = match req.dir {
        Direction::Backward => timeline::Dir::Backward,
        Direction::Forward => timeline::Dir::Forward,
    };
    let limit = u64::from(req.limit).clamp(1, 1000) as usize;
    // Older history of a room joined over federation is fetched here when the page reaches
    // the start of what this server has.
    let page = timeline::messages_with_history(
        core,
        user.user_id.as_str(),
        room_id,
        (req.from.as_deref(), req.to.as_deref()),
        dir,
        limit,
        &req.filter,
    )
    .await?;
    let mut conn = state.db.conn().await?;
    let viewer = Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    };
    let formatted = client_format::format(core, &mut conn, &page.events, Some(viewer)).await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = formatted
        .into_iter()
        .filter_map(|v| Raw::from_json_string(v.to_string()).ok())
        .collect();
    if !req.filter.lazy_load_options.is_disabled() {
        response.state = lazy_members(&state, &mut conn, room_id, &page.events, viewer).await?;
    }
    Ok(response)
}

/// The membership events of the senders in `chunk`, for lazy-loading clients.
async fn lazy_members<T>(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    room_id: &str,
    chunk: &[events::StoredEvent],
    viewer: Viewer<'_>,
) -> ApiResult<Vec<Raw<T>>> {
    let mut senders: Vec<&str> = chunk.iter().map(|e| e.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    let mut ids = Vec::new();
    for sender in senders {
        if let Some(id) = weft_core::storage::rooms::current_state_event(conn, room_id, "m.room.member", sender).await?
        {
            ids.push(id);
        }
    }
    let member_events = events::get_many(conn, &ids).await?;
    let formatted = client_format::format(&state.core, conn, &member_events, Some(viewer)).await?;
    Ok(formatted
        .into_iter()
        .filter_map(|v| Raw::from_json_string(v.to_string()).ok())
        .collect())
}
