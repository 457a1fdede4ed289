//! Delayed events (MSC4140, on the unstable paths ruma names): scheduling one (the
//! `org.matrix.msc4140.delay` query parameter of the send and state endpoints, or the
//! `delayed_event` endpoint), listing a user's, and the management actions (restart, cancel,
//! send now). The logic and the timer's claim are in `weft_core::delayed_events`.

use axum::{http::StatusCode, Router};
use ruma::api::client::delayed_events::{
    get_all_delayed_events, get_delayed_event, send_delayed_event,
    update_delayed_event::{self, UpdateAction},
};
use serde_json::{json, Value};
use weft_core::{
    delayed_events::{self as delayed, Acted, Action, Delayed, NewDelayed, Status},
    util::now_ms,
};

use super::message::content_object;
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma, RumaJsonRoute, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(schedule_endpoint)
        .ruma_json(list)
        .ruma_json(get_one)
        .ruma(update_v1)
        .ruma(update_v2)
}

/// The query parameter of the send and state endpoints that makes a send a delayed one.
const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// The delay a send or state request asks for, in milliseconds, if it asks for one.
pub fn requested_delay<T>(req: &Ruma<T>) -> ApiResult<Option<i64>> {
    let Some(raw) = req.query_param(DELAY_PARAM) else {
        return Ok(None);
    };
    raw.parse::<i64>()
        .map(Some)
        .map_err(|_| MatrixError::invalid_param(format!("{DELAY_PARAM} must be a number of milliseconds")))
}

/// What to schedule, as the endpoints received it.
pub struct Request<'a> {
    pub room_id: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: &'a Value,
    pub txn_id: Option<&'a str>,
    pub delay_ms: i64,
}

/// Schedules a delayed event after the checks a client's request must pass; answers its
/// `delay_id`. The event's own auth is checked when it is sent, with the room as it is then.
pub async fn schedule(state: &AppState, user: &AuthUser, req: Request<'_>) -> ApiResult<String> {
    let config = &state.config.delayed_events;
    if !config.enabled {
        return Err(
            MatrixError::unrecognized("Delayed events are not enabled on this server")
                .with_status(StatusCode::BAD_REQUEST),
        );
    }
    if req.delay_ms <= 0 {
        return Err(MatrixError::invalid_param(
            "The delay must be a positive number of milliseconds",
        ));
    }
    let max_delay = config.max_delay.as_millis() as i64;
    if req.delay_ms > max_delay {
        // The MSC's unstable names, with the stable field beside them for clients that read it.
        return Err(MatrixError {
            status: StatusCode::BAD_REQUEST,
            errcode: "ORG.MATRIX.MSC4140_MAX_DELAY_EXCEEDED".into(),
            message: "The requested delay exceeds the allowed maximum".into(),
            extra: Some(json!({ "org.matrix.msc4140.max_delay": max_delay, "max_delay": max_delay })),
        });
    }
    let (scheduled, next_due) = delayed::scheduled_of(&state.core, user.user_id.as_str()).await?;
    if scheduled >= i64::from(config.max_per_user) {
        let wait = next_due.map_or(0, |due| (due - now_ms()).max(0) as u64);
        let mut error = MatrixError::limit_exceeded(wait);
        error.message = "The maximum number of delayed events has been reached".into();
        return Err(error);
    }
    let delay_id = delayed::schedule(
        &state.core,
        NewDelayed {
            user_id: user.user_id.as_str(),
            device_id: user.device_id.as_str(),
            txn_id: req.txn_id,
            room_id: req.room_id,
            event_type: req.event_type,
            state_key: req.state_key,
            content: req.content,
            delay_ms: req.delay_ms,
        },
    )
    .await?;
    Ok(delay_id)
}

/// # `PUT /_matrix/client/unstable/org.matrix.msc4140/rooms/{roomId}/delayed_event/{eventType}/{txnId}`
async fn schedule_endpoint(
    state: AppState,
    req: Ruma<send_delayed_event::unstable::Request>,
) -> ApiResult<send_delayed_event::unstable::Response> {
    let user = req.sender()?;
    let content = content_object(&req.json_body.as_ref().map(|b| b["content"].clone()))?;
    let event_type = req.event_type.to_string();
    if let Some(key) = &req.state_key {
        super::state::check_state_send(&state, user, req.room_id.as_str(), &event_type, key, &content).await?;
    }
    let delay_id = schedule(
        &state,
        user,
        Request {
            room_id: req.room_id.as_str(),
            event_type: &event_type,
            state_key: req.state_key.as_deref(),
            content: &content,
            txn_id: Some(req.txn_id.as_str()),
            delay_ms: req.delay.as_millis() as i64,
        },
    )
    .await?;
    Ok(send_delayed_event::unstable::Response::new(delay_id))
}

/// A delayed event as the listing endpoints show it.
fn describe(d: &Delayed) -> Value {
    let mut out = json!({
        "delay_id": d.delay_id,
        "room_id": d.room_id,
        "type": d.event_type,
        "delay": d.delay_ms,
        "running_since": d.running_since,
        "content": serde_json::from_str::<Value>(&d.content).unwrap_or_default(),
    });
    if let Some(key) = &d.state_key {
        out["state_key"] = json!(key);
    }
    if let Some(event_id) = &d.event_id {
        out["event_id"] = json!(event_id);
    }
    if let Some(error) = &d.error {
        out["error"] = serde_json::from_str::<Value>(error).unwrap_or_default();
    }
    if let Some(ts) = d.finalised_ts {
        out["finalised_ts"] = json!(ts);
        // The MSC's newer name for when it was finalised.
        out["origin_server_ts"] = json!(ts);
    }
    out
}

/// # `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`
///
/// The user's scheduled events (soonest first), then their finalised ones (latest first);
/// `?status=scheduled|finalised` keeps one kind.
async fn list(state: AppState, req: Ruma<get_all_delayed_events::unstable::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let status = match req.query_param("status").as_deref() {
        None => None,
        Some("scheduled") => Some(Status::Scheduled),
        Some("finalised") => Some(Status::Finalised),
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown status {other:?}"))),
    };
    let found = delayed::list(&state.core, user.user_id.as_str(), status).await?;
    Ok(json!({ "delayed_events": found.iter().map(describe).collect::<Vec<_>>() }))
}

/// # `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}`
async fn get_one(state: AppState, req: Ruma<get_delayed_event::unstable::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let found = delayed::get(&state.core, user.user_id.as_str(), &req.delay_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such delayed event"))?;
    Ok(describe(&found))
}

fn action_of(action: &UpdateAction) -> ApiResult<Action> {
    match action {
        UpdateAction::Restart => Ok(Action::Restart),
        UpdateAction::Cancel => Ok(Action::Cancel),
        UpdateAction::Send => Ok(Action::Send),
        other => Err(MatrixError::invalid_param(format!(
            "Unknown action {:?}",
            other.as_str()
        ))),
    }
}

/// Applies a management action; the `delay_id` is the authority.
pub async fn act(state: &AppState, delay_id: &str, action: Action) -> ApiResult<()> {
    match delayed::act(&state.core, delay_id, action).await? {
        Acted::Done => Ok(()),
        Acted::NotFound => Err(MatrixError::not_found("No such delayed event")),
        Acted::Conflict(why) => Err(MatrixError::unknown(why).with_status(StatusCode::CONFLICT)),
    }
}

/// # `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}`
///
/// The first form, with the action in the body and an access token: only the owner's events.
async fn update_v1(
    state: AppState,
    req: Ruma<update_delayed_event::unstable_v1::Request>,
) -> ApiResult<update_delayed_event::unstable_v1::Response> {
    let user = req.sender()?;
    let action = action_of(&req.action)?;
    if delayed::get(&state.core, user.user_id.as_str(), &req.delay_id)
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found("No such delayed event"));
    }
    act(&state, &req.delay_id, action).await?;
    Ok(update_delayed_event::unstable_v1::Response::new())
}

/// # `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{action}`
///
/// No access token: whoever holds the `delay_id` (a service the user delegated to) may act.
async fn update_v2(
    state: AppState,
    req: Ruma<update_delayed_event::unstable_v2::Request>,
) -> ApiResult<update_delayed_event::unstable_v2::Response> {
    let action = action_of(&req.action)?;
    act(&state, &req.delay_id, action).await?;
    Ok(update_delayed_event::unstable_v2::Response::new())
}
