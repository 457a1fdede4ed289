//! `/_matrix/federation/v1/backfill/{roomId}`: a room's history before given events.

use axum::Router;
use ruma::{api::federation::backfill::get_backfill, MilliSecondsSinceUnixEpoch};
use weft_core::rooms::for_servers;
use weft_http::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use super::{origin, pdus};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(backfill)
}

/// # `GET /_matrix/federation/v1/backfill/{roomId}`
async fn backfill(state: AppState, req: Ruma<get_backfill::v1::Request>) -> ApiResult<get_backfill::v1::Response> {
    let from: Vec<String> = req.v.iter().map(ToString::to_string).collect();
    let events = for_servers::backfill(
        &state.core,
        origin(&req)?.as_str(),
        req.room_id.as_str(),
        &from,
        req.limit.into(),
    )
    .await?;
    Ok(get_backfill::v1::Response::new(
        state.core.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus(events),
    ))
}
