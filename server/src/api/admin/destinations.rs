//! Federation destinations in the admin API (`/_synapse/admin/v1/federation/destinations`);
//! the logic is `weft_core::admin::destinations`.

use axum::{
    extract::{Path, State},
    Json,
};
use serde_json::{json, Value};
use weft_core::admin::{self, destinations};

use super::{query::Params, Admin};
use crate::{error::ApiResult, state::AppState};

fn next_token(answer: &mut Value, page: admin::Page, shown: usize, total: usize) {
    let end = page.from + shown;
    if end < total {
        // A string, as Synapse answers it here.
        answer["next_token"] = json!(end.to_string());
    }
}

/// # `GET /_synapse/admin/v1/federation/destinations`
pub async fn list(State(state): State<AppState>, _: Admin, q: Params) -> ApiResult<Json<Value>> {
    let page = admin::Page::new(q.int("from")?, q.int("limit")?, 100)?;
    let (list, total) = destinations::list(
        &state.core,
        page,
        destinations::Order::parse(q.str("order_by"))?,
        admin::parse_dir(q.str("dir"))?,
        q.str("destination"),
    )
    .await?;
    let mut answer = json!({
        "destinations": list.iter().map(destinations::Destination::to_json).collect::<Vec<_>>(),
        "total": total,
    });
    next_token(&mut answer, page, list.len(), total);
    Ok(Json(answer))
}

/// # `GET /_synapse/admin/v1/federation/destinations/{destination}`
pub async fn get(State(state): State<AppState>, _: Admin, Path(destination): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(destinations::get(&state.core, &destination).await?.to_json()))
}

/// # `GET /_synapse/admin/v1/federation/destinations/{destination}/rooms`
pub async fn rooms(
    State(state): State<AppState>,
    _: Admin,
    Path(destination): Path<String>,
    q: Params,
) -> ApiResult<Json<Value>> {
    let page = admin::Page::new(q.int("from")?, q.int("limit")?, 100)?;
    let backwards = admin::parse_dir(q.str("dir"))?;
    let (rooms, total) = destinations::rooms(&state.core, &destination, page, backwards).await?;
    let mut answer = json!({
        "rooms": rooms.iter().map(|(room_id, pos)| json!({ "room_id": room_id, "stream_ordering": pos })).collect::<Vec<_>>(),
        "total": total,
    });
    next_token(&mut answer, page, rooms.len(), total);
    Ok(Json(answer))
}

/// # `POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`
pub async fn reset_connection(
    State(state): State<AppState>,
    _: Admin,
    Path(destination): Path<String>,
) -> ApiResult<Json<Value>> {
    destinations::reset_connection(&state.core, &destination).await?;
    Ok(Json(json!({})))
}

/// # `GET /_synapse/admin/v1/background_updates/status`
///
/// Weft's schema changes are all migrations run before the server starts; none runs in the
/// background, so there is never a current update.
pub async fn background_updates(_: Admin) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "enabled": true, "current_updates": {} })))
}
