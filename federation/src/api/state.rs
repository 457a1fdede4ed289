//! `/_matrix/federation/v1/state/{roomId}` and `/state_ids/{roomId}`: the room's state at an
//! event, and its auth chain (see `weft_core::rooms::for_servers::state_ids` for which state).

use axum::Router;
use ruma::{
    api::federation::event::{get_room_state, get_room_state_ids},
    OwnedEventId,
};
use weft_core::rooms::for_servers;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use super::{origin, pdus};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(state).ruma(state_ids)
}

/// # `GET /_matrix/federation/v1/state/{roomId}`
async fn state(state: AppState, req: Ruma<get_room_state::v1::Request>) -> ApiResult<get_room_state::v1::Response> {
    let at = for_servers::state(
        &state.core,
        origin(&req)?.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
    )
    .await?;
    Ok(get_room_state::v1::Response::new(pdus(at.auth_chain), pdus(at.state)))
}

/// # `GET /_matrix/federation/v1/state_ids/{roomId}`
async fn state_ids(
    state: AppState,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> ApiResult<get_room_state_ids::v1::Response> {
    let at = for_servers::state_ids(
        &state.core,
        origin(&req)?.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
    )
    .await?;
    Ok(get_room_state_ids::v1::Response::new(
        event_ids(at.auth_chain)?,
        event_ids(at.state)?,
    ))
}

/// Stored event IDs were valid when they were stored.
fn event_ids(ids: Vec<String>) -> ApiResult<Vec<OwnedEventId>> {
    ids.into_iter()
        .map(|id| OwnedEventId::try_from(id).map_err(|e| MatrixError::unknown(format!("stored event ID: {e}"))))
        .collect()
}
