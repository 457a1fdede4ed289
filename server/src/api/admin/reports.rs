//! Event reports: `/_synapse/admin/v1/event_reports[/{reportId}]`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use weft_core::admin::reports;

use super::{
    params::{self, Params},
    Admin,
};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// # `GET /_synapse/admin/v1/event_reports`
///
/// Newest first unless `dir=f`; `user_id` and `room_id` match parts of the reporter's and
/// the room's IDs.
pub async fn list(State(state): State<AppState>, _: Admin, Query(q): Query<Params>) -> ApiResult<Json<Value>> {
    let page = params::page(&q, true)?;
    let (list, total) = reports::list(
        &state.core,
        q.get("user_id").map(String::as_str),
        q.get("room_id").map(String::as_str),
        page,
    )
    .await?;
    let next = page.next_token(list.len(), total);
    let mut out = json!({ "event_reports": list, "total": total });
    if let Some(next) = next {
        out["next_token"] = json!(next);
    }
    Ok(Json(out))
}

fn report_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| MatrixError::invalid_param("The report ID must be a non-negative integer"))
}

/// # `GET /_synapse/admin/v1/event_reports/{reportId}`
pub async fn get(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let report = reports::get(&state.core, report_id(&id)?)
        .await?
        .ok_or_else(|| MatrixError::not_found("Event report not found"))?;
    Ok(Json(report))
}

/// # `DELETE /_synapse/admin/v1/event_reports/{reportId}`
pub async fn delete(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !reports::delete(&state.core, report_id(&id)?).await? {
        return Err(MatrixError::not_found("Event report not found"));
    }
    Ok(Json(json!({})))
}
