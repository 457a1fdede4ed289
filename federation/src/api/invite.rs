//! `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites a local user;
//! and the deprecated v1, which older servers use for rooms of versions 1 and 2.

use axum::Router;
use ruma::{
    api::federation::membership::{create_invite, RawStrippedState},
    RoomVersionId,
};
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(invite).ruma(invite_v1)
}

/// v1 sends the event itself as the body, with the stripped state in its `unsigned`, and names
/// no room version: like other servers, it is taken as version 1, whose event format and
/// invite rules version 2 shares.
async fn invite_v1(state: AppState, req: Ruma<create_invite::v1::Request>) -> ApiResult<create_invite::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = super::origin(&req)?.to_owned();
    // ruma's v1 type keeps only some of the event's fields; the event is the body as sent.
    let body = req
        .json_body
        .as_ref()
        .ok_or_else(|| MatrixError::not_json("The invite is not JSON"))?;
    let invite_room_state: Vec<RawStrippedState> =
        serde_json::from_value(body["unsigned"]["invite_room_state"].clone()).unwrap_or_default();
    let raw = serde_json::value::to_raw_value(body).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let event = crate::invite::receive(
        fed,
        &origin,
        &req.room_id,
        &req.event_id,
        &RoomVersionId::V1,
        &raw,
        &invite_room_state,
    )
    .await?;
    Ok(create_invite::v1::Response::new(event))
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
