//! `/_matrix/federation/v1/publicRooms` (GET and POST): this server's room directory, as other
//! servers' users browse it.

use axum::Router;
use ruma::{
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::RoomNetwork,
};
use weft_core::rooms::directory::{self, Query};
use weft_http::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(public_rooms).ruma(public_rooms_filtered)
}

/// No third-party networks are bridged here, so their directories are empty.
fn third_party(network: &RoomNetwork) -> bool {
    matches!(network, RoomNetwork::ThirdParty(_))
}

async fn public_rooms(
    state: AppState,
    req: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<get_public_rooms::v1::Response> {
    super::origin(&req)?;
    let mut res = get_public_rooms::v1::Response::new();
    if third_party(&req.room_network) {
        return Ok(res);
    }
    let query = Query::from_request(req.limit, req.since.clone(), &Default::default());
    let page = directory::public_rooms(&state.core, &query).await?;
    res.total_room_count_estimate = page.total_estimate();
    (res.chunk, res.next_batch, res.prev_batch) = (page.chunk, page.next_batch, page.prev_batch);
    Ok(res)
}

async fn public_rooms_filtered(
    state: AppState,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<get_public_rooms_filtered::v1::Response> {
    super::origin(&req)?;
    let mut res = get_public_rooms_filtered::v1::Response::new();
    if third_party(&req.room_network) {
        return Ok(res);
    }
    let query = Query::from_request(req.limit, req.since.clone(), &req.filter);
    let page = directory::public_rooms(&state.core, &query).await?;
    res.total_room_count_estimate = page.total_estimate();
    (res.chunk, res.next_batch, res.prev_batch) = (page.chunk, page.next_batch, page.prev_batch);
    Ok(res)
}
