//! `/sync` (v3).

use std::time::Duration;

use ruma::api::client::{filter::FilterDefinition, sync::sync_events};
use serde_json::Value;
use weft_core::{
    storage::filters,
    sync::{self, SyncRequest, SyncToken},
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// Long-polls are capped so that proxies and clients never see a hung request.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync_v3(state: AppState, req: Ruma<sync_events::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let filter = match &req.filter {
        None => FilterDefinition::default(),
        Some(sync_events::v3::Filter::FilterDefinition(def)) => def.clone(),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let id: i64 = id
                .parse()
                .map_err(|_| MatrixError::invalid_param("Unknown filter ID"))?;
            let content = filters::get(&state.db, user.user_id.as_str(), id)
                .await?
                .ok_or_else(|| MatrixError::invalid_param("Unknown filter ID"))?;
            serde_json::from_str(&content).map_err(|e| MatrixError::unknown(e.to_string()))?
        }
        Some(_) => FilterDefinition::default(),
    };
    let since = req.since.as_deref().map(SyncToken::parse).transpose()?;
    // Syncing is activity: it marks the user online unless the client says otherwise.
    let presence = match &req.set_presence {
        ruma::presence::PresenceState::Offline => None,
        ruma::presence::PresenceState::Unavailable => Some("unavailable"),
        _ => Some("online"),
    };
    if let Some(p) = presence {
        weft_core::presence::set(&state.core, user.user_id.as_str(), p, None).await?;
    }
    let request = SyncRequest {
        user_id: user.user_id.to_string(),
        device_id: user.device_id.to_string(),
        since,
        full_state: req.full_state,
        filter,
        timeout: req.timeout.unwrap_or_default().min(MAX_TIMEOUT),
    };
    Ok(sync::sync(&state.core, &request).await?)
}
