//! Simplified sliding sync (MSC4186) at `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.

use std::time::Duration;

use ruma::api::client::sync::sync_events;
use serde_json::Value;
use weft_core::sync::sliding::{self, Request, Session};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync_v5(state: AppState, req: Ruma<sync_events::v5::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let body: Request = match &req.json_body {
        Some(json) => serde_json::from_value(json.clone())
            .map_err(|e| MatrixError::bad_json(format!("Invalid sliding sync request: {e}")))?,
        None => Request::default(),
    };
    if !matches!(req.set_presence, ruma::presence::PresenceState::Offline) {
        weft_core::presence::set(&state.core, user.user_id.as_str(), "online", None).await?;
    }
    let session = Session {
        user_id: user.user_id.as_str(),
        device_id: user.device_id.as_str(),
        conn_id: req.conn_id.as_deref().unwrap_or(""),
        pos: req.pos.as_deref(),
        timeout: req.timeout.unwrap_or_default().min(MAX_TIMEOUT),
    };
    Ok(sliding::sync(&state.core, &state.core.sliding, session, &body).await?)
}
