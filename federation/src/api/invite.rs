//! `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites a local user.

use axum::Router;
use ruma::api::federation::membership::create_invite;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(invite)
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
