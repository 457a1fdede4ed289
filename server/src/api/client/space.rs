//! `GET /rooms/{roomId}/hierarchy`: the rooms of a space, those this server is not in asked of
//! the servers that are.

use axum::Router;
use ruma::api::client::space::{get_hierarchy, SpaceHierarchyRoomsChunk};
use weft_core::rooms::hierarchy::{self, HierarchyQuery, RemoteSpaces};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(get_hierarchy)
}

/// Rooms per page, by default and at most (as Synapse).
const MAX_LIMIT: u64 = 50;

pub async fn get_hierarchy(
    state: AppState,
    req: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<get_hierarchy::v1::Response> {
    let user = req.sender()?;
    let limit = match req.limit.map(u64::from) {
        Some(0) => return Err(MatrixError::invalid_param("limit must be a positive integer")),
        Some(n) => n.min(MAX_LIMIT),
        None => MAX_LIMIT,
    };
    let q = HierarchyQuery {
        root: req.room_id.as_str(),
        user: user.user_id.as_str(),
        from: req.from.as_deref(),
        limit: limit as usize,
        max_depth: req.max_depth.map(|d| u64::from(d).min(usize::MAX as u64) as usize),
        suggested_only: req.suggested_only,
        remote: weft_federation::of(&state).ok().map(|f| f as &dyn RemoteSpaces),
    };
    let page = hierarchy::hierarchy(&state.core, &q).await?;
    let mut res = get_hierarchy::v1::Response::new();
    for room in page.rooms {
        let chunk: SpaceHierarchyRoomsChunk = serde_json::from_str(&room.to_string())
            .map_err(|e| MatrixError::unknown(format!("Invalid room summary: {e}")))?;
        res.rooms.push(chunk);
    }
    res.next_batch = page.next_batch;
    Ok(res)
}
