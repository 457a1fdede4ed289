//! Global and per-room account data, and room tags (`/user/{userId}/rooms/{roomId}/tags`).

use ruma::{
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
    UserId,
};
use serde_json::Value;
use weft_core::storage::account_data;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma},
    state::AppState,
};

fn check_own(sender: &AuthUser, target: &UserId) -> ApiResult<()> {
    if sender.user_id != target {
        return Err(MatrixError::forbidden("Cannot access other users' account data"));
    }
    Ok(())
}

/// Types the server manages itself may not be set through account data.
fn check_settable(event_type: &str) -> ApiResult<()> {
    if matches!(event_type, "m.fully_read" | "m.push_rules") {
        return Err(MatrixError::bad_json(format!(
            "Cannot set {event_type} through this API"
        )));
    }
    Ok(())
}

fn body_object(req_json: &Option<serde_json::Value>) -> ApiResult<String> {
    match req_json {
        Some(v @ serde_json::Value::Object(_)) => Ok(v.to_string()),
        _ => Err(MatrixError::bad_json("Account data must be a JSON object")),
    }
}

/// Stores one piece of account data (`room_id` "" for global) and wakes the user's syncs.
async fn store(
    state: &AppState,
    user: &AuthUser,
    target: &UserId,
    room_id: &str,
    event_type: &str,
    body: &Option<serde_json::Value>,
) -> ApiResult<()> {
    check_own(user, target)?;
    check_settable(event_type)?;
    let content = body_object(body)?;
    weft_core::account_data::put(&state.core, user.user_id.as_str(), room_id, event_type, &content).await?;
    Ok(())
}

async fn load<T>(
    state: &AppState,
    user: &AuthUser,
    target: &UserId,
    room_id: &str,
    event_type: &str,
) -> ApiResult<Raw<T>> {
    check_own(user, target)?;
    let content = account_data::get(&mut *state.db.conn().await?, user.user_id.as_str(), room_id, event_type)
        .await?
        .ok_or_else(|| MatrixError::not_found("Account data not found"))?;
    Raw::from_json_string(content).map_err(|e| MatrixError::unknown(e.to_string()))
}

pub async fn set_global(
    state: AppState,
    req: Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<set_global_account_data::v3::Response> {
    store(
        &state,
        req.sender()?,
        &req.user_id,
        "",
        &req.event_type.to_string(),
        &req.json_body,
    )
    .await?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    state: AppState,
    req: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    let raw = load(&state, req.sender()?, &req.user_id, "", &req.event_type.to_string()).await?;
    Ok(get_global_account_data::v3::Response::new(raw))
}

pub async fn set_room(
    state: AppState,
    req: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<set_room_account_data::v3::Response> {
    store(
        &state,
        req.sender()?,
        &req.user_id,
        req.room_id.as_str(),
        &req.event_type.to_string(),
        &req.json_body,
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    state: AppState,
    req: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    let raw = load(
        &state,
        req.sender()?,
        &req.user_id,
        req.room_id.as_str(),
        &req.event_type.to_string(),
    )
    .await?;
    Ok(get_room_account_data::v3::Response::new(raw))
}

pub async fn get_tags(state: AppState, req: Ruma<get_tags::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    check_own(user, &req.user_id)?;
    Ok(weft_core::account_data::tags(&state.core, user.user_id.as_str(), req.room_id.as_str()).await?)
}

pub async fn put_tag(state: AppState, req: Ruma<create_tag::v3::Request>) -> ApiResult<create_tag::v3::Response> {
    let user = req.sender()?;
    check_own(user, &req.user_id)?;
    // What the client sent (ruma checked `order`), so fields ruma does not model survive.
    let info = match &req.json_body {
        Some(info @ Value::Object(_)) => info.clone(),
        _ => return Err(MatrixError::bad_json("Tag info must be a JSON object")),
    };
    weft_core::account_data::set_tag(&state.core, user.user_id.as_str(), req.room_id.as_str(), &req.tag, info).await?;
    Ok(create_tag::v3::Response::new())
}

pub async fn delete_tag(state: AppState, req: Ruma<delete_tag::v3::Request>) -> ApiResult<delete_tag::v3::Response> {
    let user = req.sender()?;
    check_own(user, &req.user_id)?;
    weft_core::account_data::remove_tag(&state.core, user.user_id.as_str(), req.room_id.as_str(), &req.tag).await?;
    Ok(delete_tag::v3::Response::new())
}
