//! `/presence/{userId}/status`.

use std::time::Duration;

use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};
use weft_core::{presence, util::now_ms};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

pub async fn set(state: AppState, req: Ruma<set_presence::v3::Request>) -> ApiResult<set_presence::v3::Response> {
    let user = req.sender()?;
    if user.user_id != req.user_id {
        return Err(MatrixError::forbidden("You cannot set another user's presence"));
    }
    let value = match &req.presence {
        PresenceState::Online => "online",
        PresenceState::Unavailable => "unavailable",
        PresenceState::Offline => "offline",
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown presence {}",
                other.as_str()
            )))
        }
    };
    let msg = req.status_msg.as_deref();
    presence::set(&state.core, user.user_id.as_str(), value, Some(msg)).await?;
    Ok(set_presence::v3::Response::new())
}

pub async fn get(state: AppState, req: Ruma<get_presence::v3::Request>) -> ApiResult<get_presence::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    // Presence is visible to the user and to those sharing a room with them.
    if user.user_id != req.user_id
        && !presence::users_sharing_rooms(&mut conn, user.user_id.as_str())
            .await?
            .iter()
            .any(|u| u == req.user_id.as_str())
    {
        return Err(MatrixError::forbidden("You do not share a room with this user"));
    }
    let current = presence::get(&mut conn, req.user_id.as_str()).await?;
    let Some(p) = current else {
        if weft_core::storage::users::get(&state.db, req.user_id.as_str())
            .await?
            .is_none()
        {
            return Err(MatrixError::not_found("Unknown user"));
        }
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    };
    let mut response = get_presence::v3::Response::new(PresenceState::from(p.effective_state()));
    response.status_msg = p.status_msg.clone();
    response.currently_active = Some(p.effective_state() == "online");
    response.last_active_ago = Some(Duration::from_millis((now_ms() - p.last_active_ts).max(0) as u64));
    Ok(response)
}
