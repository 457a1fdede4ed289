//! `GET /_matrix/federation/v1/hierarchy/{roomId}`: a room of this server's and its children,
//! as another server's users see them in a space (`rooms::hierarchy::for_server`).

use axum::Router;
use ruma::{api::federation::space::get_hierarchy, room::RoomSummary};
use weft_core::rooms::hierarchy;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(get_hierarchy)
}

async fn get_hierarchy(
    state: AppState,
    req: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<get_hierarchy::v1::Response> {
    let origin = super::origin(&req)?;
    let served = hierarchy::for_server(&state.core, origin.as_str(), req.room_id.as_str(), req.suggested_only)
        .await?
        .ok_or_else(|| MatrixError::not_found("Unknown room, or not one your server may see"))?;
    let mut response = get_hierarchy::v1::Response::new(summary(served.room)?);
    response.children = served
        .children
        .into_iter()
        .map(summary::<RoomSummary>)
        .collect::<ApiResult<_>>()?;
    response.inaccessible_children = served
        .inaccessible_children
        .into_iter()
        .filter_map(|id| id.try_into().ok())
        .collect();
    Ok(response)
}

/// A summary core made, in ruma's type.
fn summary<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    serde_json::from_value(value).map_err(|e| MatrixError::unknown(format!("Invalid room summary: {e}")))
}
