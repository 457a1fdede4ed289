//! Media in the admin API (`/_synapse/admin/v1/media...`, a room's media, users' usage); the
//! logic is `weft_core::admin::media`.

use axum::{
    extract::{Path, State},
    Json,
};
use serde_json::{json, Value};
use weft_core::admin::{self, media};
use weft_http::media::repo;

use super::{query::Params, Admin};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// # `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`
pub async fn quarantine(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    media::set_quarantined(&repo(&state), &server, &media_id, Some(admin.user_id.as_str())).await?;
    Ok(Json(json!({})))
}

/// # `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`
pub async fn unquarantine(
    State(state): State<AppState>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    media::set_quarantined(&repo(&state), &server, &media_id, None).await?;
    Ok(Json(json!({})))
}

/// # `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`
pub async fn quarantine_room(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let count = media::quarantine_room(&repo(&state), &state.core, &room_id, admin.user_id.as_str()).await?;
    Ok(Json(json!({ "num_quarantined": count })))
}

/// # `POST /_synapse/admin/v1/media/protect/{mediaId}`
pub async fn protect(State(state): State<AppState>, _: Admin, Path(media_id): Path<String>) -> ApiResult<Json<Value>> {
    media::set_protected(&repo(&state), &media_id, true).await?;
    Ok(Json(json!({})))
}

/// # `POST /_synapse/admin/v1/media/unprotect/{mediaId}`
pub async fn unprotect(
    State(state): State<AppState>,
    _: Admin,
    Path(media_id): Path<String>,
) -> ApiResult<Json<Value>> {
    media::set_protected(&repo(&state), &media_id, false).await?;
    Ok(Json(json!({})))
}

/// # `GET /_synapse/admin/v1/media/{serverName}/{mediaId}`
pub async fn info(
    State(state): State<AppState>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let info = media::info(&repo(&state), &server, &media_id).await?;
    Ok(Json(json!({ "media_info": info })))
}

/// # `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let repo = repo(&state);
    if !repo.is_local(&server) {
        return Err(MatrixError::invalid_param("Can only delete local media"));
    }
    let deleted = media::delete_local(&repo, &[media_id]).await?;
    if deleted.is_empty() {
        return Err(MatrixError::not_found("Unknown media"));
    }
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

/// # `POST /_synapse/admin/v1/media/delete`
pub async fn delete_by_age(State(state): State<AppState>, _: Admin, q: Params) -> ApiResult<Json<Value>> {
    let before_ts = q
        .int("before_ts")?
        .ok_or_else(|| MatrixError::missing_param("Missing integer query parameter 'before_ts'"))?;
    let query = media::AgeQuery {
        before_ts,
        size_gt: q.int("size_gt")?.unwrap_or(0),
        keep_profiles: q.bool("keep_profiles", true)?,
        include_quarantined: q.bool("include_quarantined_media", false)?,
    };
    let deleted = media::delete_by_age(&repo(&state), query).await?;
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

/// # `POST /_synapse/admin/v1/purge_media_cache`
pub async fn purge_media_cache(State(state): State<AppState>, _: Admin, q: Params) -> ApiResult<Json<Value>> {
    let before_ts = q
        .int("before_ts")?
        .ok_or_else(|| MatrixError::missing_param("Missing integer query parameter 'before_ts'"))?;
    let deleted = media::purge_remote_cache(&repo(&state), before_ts).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

/// # `GET /_synapse/admin/v1/room/{roomId}/media`
pub async fn room_media(
    State(state): State<AppState>,
    _: Admin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (local, remote) = media::room_media(&state.core, &room_id).await?;
    Ok(Json(
        json!({ "local": local, "remote": remote, "total": local.len() + remote.len() }),
    ))
}

/// # `GET /_synapse/admin/v1/statistics/users/media`
pub async fn user_statistics(State(state): State<AppState>, _: Admin, q: Params) -> ApiResult<Json<Value>> {
    let query = media::UsageQuery {
        page: admin::Page::new(q.int("from")?, q.int("limit")?, 100)?,
        order_by: media::UsageOrder::parse(q.str("order_by"))?,
        backwards: admin::parse_dir(q.str("dir"))?,
        from_ts: q.int("from_ts")?,
        until_ts: q.int("until_ts")?,
        search_term: q.str("search_term").map(str::to_owned),
    };
    let (users, total) = media::usage(&repo(&state), &query).await?;
    let mut answer = json!({
        "users": users.iter().map(media::Usage::to_json).collect::<Vec<_>>(),
        "total": total,
    });
    let end = query.page.from + users.len();
    if end < total {
        answer["next_token"] = json!(end);
    }
    Ok(Json(answer))
}
