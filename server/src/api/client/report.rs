//! Reporting content: `POST /rooms/{roomId}/report/{eventId}` and `POST /rooms/{roomId}/report`.

use axum::Router;
use ruma::api::client::room::{report_content, report_room};
use weft_core::rooms::reports;

use crate::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(report_event).ruma(report_whole_room)
}

async fn report_event(
    state: AppState,
    req: Ruma<report_content::v3::Request>,
) -> ApiResult<report_content::v3::Response> {
    let user = req.sender()?;
    // `score` left the spec in v1.13 and ruma no longer models it; older clients still send it.
    let score = reports::parse_score(req.json_body.as_ref().and_then(|b| b.get("score")))?;
    reports::report_event(
        &state.core,
        user.user_id.as_str(),
        req.room_id.as_str(),
        req.event_id.as_str(),
        req.reason.as_deref(),
        score,
    )
    .await?;
    Ok(report_content::v3::Response::new())
}

async fn report_whole_room(
    state: AppState,
    req: Ruma<report_room::v3::Request>,
) -> ApiResult<report_room::v3::Response> {
    let user = req.sender()?;
    let reason = (!req.reason.is_empty()).then_some(req.reason.as_str());
    reports::report_room(&state.core, user.user_id.as_str(), req.room_id.as_str(), reason).await?;
    Ok(report_room::v3::Response::new())
}
