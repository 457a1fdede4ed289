//! `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites a local user;
//! and the deprecated v1, which older servers use for rooms of versions 1 and 2.

use axum::{
    extract::{Path, State},
    routing::put,
    Json, Router,
};
use ruma::{
    api::federation::membership::{create_invite, RawStrippedState},
    OwnedEventId, OwnedRoomId, RoomVersionId,
};
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{read_body, verify_server, Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(invite)
        .route("/_matrix/federation/v1/invite/{room_id}/{event_id}", put(invite_v1))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`
///
/// v1 sends the event itself as the body, with the stripped state in its `unsigned`, and names
/// no room version: it is the room's when this server is in the room, else the one the
/// stripped create event names, else version 1 (whose event format and invite rules version 2
/// shares), as other servers take it. (ruma's v1 type expects fields of the oldest event
/// format and keeps only some, so the body is read as sent.)
async fn invite_v1(
    State(state): State<AppState>,
    Path((room_id, event_id)): Path<(OwnedRoomId, OwnedEventId)>,
    request: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    let fed = crate::of(&state)?;
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, state.config.max_request_size).await?;
    let origin = verify_server(&state, &parts, &bytes).await?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| MatrixError::not_json(e.to_string()))?;
    let invite_room_state: Vec<RawStrippedState> =
        serde_json::from_value(body["unsigned"]["invite_room_state"].clone()).unwrap_or_default();
    let raw = serde_json::value::to_raw_value(&body).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let stripped_version = || {
        body["unsigned"]["invite_room_state"]
            .as_array()?
            .iter()
            .find(|e| e["type"] == "m.room.create")?["content"]["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
    };
    let version = match crate::receive::RoomVersion::of_known(fed, &room_id).await {
        Ok(Some(room)) => RoomVersionId::try_from(room.version.as_str()).ok(),
        _ => None,
    }
    .or_else(stripped_version)
    .unwrap_or(RoomVersionId::V1);
    let event = crate::invite::receive(fed, &origin, &room_id, &event_id, &version, &raw, &invite_room_state).await?;
    let event: serde_json::Value =
        serde_json::from_str(event.get()).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(Json(serde_json::json!([200, { "event": event }])))
}

async fn invite(state: AppState, req: Ruma<create_invite::v2::Request>) -> ApiResult<create_invite::v2::Response> {
    let fed = crate::of(&state)?;
    let origin = req
        .origin
        .clone()
        .ok_or_else(|| MatrixError::unauthorized("Not signed"))?;
    let event = crate::invite::receive(
        fed,
        &origin,
        &req.room_id,
        &req.event_id,
        &req.room_version,
        &req.event,
        &req.invite_room_state,
    )
    .await?;
    Ok(create_invite::v2::Response::new(event))
}
