//! A user's media: `/_synapse/admin/v1/users/{userId}/media` (list and delete a page).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use weft_core::admin::{user_media, users};

use super::{
    params::{self, Params},
    Admin,
};
use crate::{error::ApiResult, state::AppState};

/// # `GET /_synapse/admin/v1/users/{userId}/media`
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    Query(q): Query<Params>,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let page = params::page(&q, false)?;
    let order_by = q.get("order_by").map(String::as_str).unwrap_or("created_ts");
    let (media, total) = user_media::list(&state.db, user_id.as_str(), order_by, page).await?;
    let next = page.next_token(media.len(), total);
    let mut out = json!({ "media": media, "total": total });
    if let Some(next) = next {
        out["next_token"] = json!(next);
    }
    Ok(Json(out))
}

/// # `DELETE /_synapse/admin/v1/users/{userId}/media`
///
/// Deletes the page `GET` would list with the same parameters.
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    Query(q): Query<Params>,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let page = params::page(&q, false)?;
    let order_by = q.get("order_by").map(String::as_str).unwrap_or("created_ts");
    let repo = crate::media::repo(&state);
    let deleted = user_media::delete_page(&state.db, &repo.blobs, user_id.as_str(), order_by, page).await?;
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}
