//! Rooms in the admin API (`/_synapse/admin/v1/rooms...`, deletion under `/v2/rooms`), on
//! Synapse's paths and shapes; the logic is `weft_core::admin::rooms`, `room_delete`, `purge`.

use axum::{
    extract::{Path, State},
    Json,
};
use ruma::{RoomAliasId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};
use weft_core::{
    admin::{self, room_delete, rooms},
    rooms::timeline::Dir,
};

use super::{
    query::{optional_body, Params},
    Admin,
};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

fn room_id(raw: &str) -> ApiResult<&str> {
    RoomId::parse(raw)
        .map(|_| raw)
        .map_err(|_| MatrixError::invalid_param(format!("{raw} is not a valid room ID")))
}

/// # `GET /_synapse/admin/v1/rooms`
pub async fn list(State(state): State<AppState>, _: Admin, q: Params) -> ApiResult<Json<Value>> {
    let query = rooms::ListQuery {
        page: admin::Page::new(q.int("from")?, q.int("limit")?, 100)?,
        order_by: rooms::OrderBy::parse(q.str("order_by"))?,
        backwards: admin::parse_dir(q.str("dir"))?,
        search_term: q.str("search_term").map(str::to_owned),
    };
    let list = rooms::list(&state.core, &query).await?;
    let mut answer = json!({
        "rooms": list.rooms.iter().map(rooms::Summary::to_json).collect::<Vec<_>>(),
        "offset": query.page.from,
        "total_rooms": list.total,
    });
    if let Some(next) = list.next_batch {
        answer["next_batch"] = json!(next);
    }
    if let Some(prev) = list.prev_batch {
        answer["prev_batch"] = json!(prev);
    }
    Ok(Json(answer))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}`
pub async fn details(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(rooms::details(&state.core, room_id(&id)?).await?))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/members`
pub async fn members(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let members = rooms::members(&state.core, room_id(&id)?).await?;
    Ok(Json(json!({ "total": members.len(), "members": members })))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/state`
pub async fn room_state(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "state": rooms::state(&state.core, room_id(&id)?).await? }),
    ))
}

fn parse_dir(q: &Params, default: Dir) -> ApiResult<Dir> {
    match q.str("dir") {
        None => Ok(default),
        Some("f") => Ok(Dir::Forward),
        Some("b") => Ok(Dir::Backward),
        Some(_) => Err(MatrixError::invalid_param("dir must be f or b")),
    }
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/messages`
pub async fn messages(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    q: Params,
) -> ApiResult<Json<Value>> {
    let room = room_id(&id)?;
    let dir = parse_dir(&q, Dir::Forward)?;
    let limit = q.int("limit")?.unwrap_or(10);
    if limit < 0 {
        return Err(MatrixError::invalid_param("limit must not be negative"));
    }
    let filter = match q.str("filter") {
        Some(json) => serde_json::from_str(json).map_err(|e| MatrixError::bad_json(format!("filter: {e}")))?,
        None => Default::default(),
    };
    let (chunk, start, end) = rooms::messages(
        &state.core,
        room,
        (q.str("from"), q.str("to")),
        dir,
        (limit as usize).min(1000),
        &filter,
    )
    .await?;
    let mut answer = json!({ "chunk": chunk, "start": start });
    if let Some(end) = end {
        answer["end"] = json!(end);
    }
    Ok(Json(answer))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/timestamp_to_event`
pub async fn timestamp_to_event(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    q: Params,
) -> ApiResult<Json<Value>> {
    let ts = q.int("ts")?.ok_or_else(|| MatrixError::missing_param("Missing ts"))?;
    let dir = parse_dir(&q, Dir::Forward)?;
    let (event_id, origin_server_ts) = rooms::event_at_timestamp(&state.core, room_id(&id)?, ts, dir).await?;
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": origin_server_ts }),
    ))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub async fn forward_extremities(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = rooms::forward_extremities(&state.core, room_id(&id)?).await?;
    let results: Vec<Value> = list
        .iter()
        .map(|e| {
            json!({
                "event_id": e.event_id, "state_group": e.state_group, "depth": e.depth, "received_ts": e.received_ts,
            })
        })
        .collect();
    Ok(Json(json!({ "count": results.len(), "results": results })))
}

/// # `DELETE /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub async fn delete_forward_extremities(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let deleted = rooms::delete_forward_extremities(&state.core, room_id(&id)?).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Deserialize)]
pub struct BlockBody {
    block: bool,
}

/// # `PUT /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn set_block(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let room = room_id(&id)?;
    let body: BlockBody = serde_json::from_slice(&body).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    rooms::set_blocked(&state.core, room, admin.user_id.as_str(), body.block).await?;
    Ok(Json(json!({ "block": body.block })))
}

/// # `GET /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn get_block(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let room = room_id(&id)?;
    let mut conn = state.db.conn().await?;
    Ok(Json(match rooms::blocked_by(&mut conn, room).await? {
        Some(user_id) => json!({ "block": true, "user_id": user_id }),
        None => json!({ "block": false }),
    }))
}

#[derive(Deserialize, Default)]
pub struct MakeAdminBody {
    user_id: Option<String>,
}

/// # `POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin`
pub async fn make_room_admin(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let body: MakeAdminBody = optional_body(&body)?;
    let room = if id.starts_with('#') {
        let alias = RoomAliasId::parse(&id).map_err(|_| MatrixError::invalid_param("Invalid room alias"))?;
        weft_core::rooms::aliases::resolve(&state.core, &alias).await?
    } else {
        room_id(&id)?.to_owned()
    };
    let target = match body.user_id {
        Some(user) => {
            UserId::parse(&user).map_err(|_| MatrixError::invalid_param(format!("{user} is not a valid user ID")))?
        }
        None => admin.user_id.clone(),
    };
    rooms::make_room_admin(&state.core, &room, &target).await?;
    Ok(Json(json!({})))
}

/// # `DELETE /_synapse/admin/v2/rooms/{roomId}`
pub async fn delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let room = room_id(&id)?;
    let params: room_delete::DeleteParams = optional_body(&body)?;
    if params.force_purge && !params.purge {
        return Err(MatrixError::invalid_param("force_purge needs purge"));
    }
    let delete_id = room_delete::start(
        &state.core,
        room,
        &admin.user_id,
        params,
        crate::api::client::capabilities::DEFAULT_ROOM_VERSION,
    )
    .await?;
    Ok(Json(json!({ "delete_id": delete_id })))
}

/// # `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`
pub async fn delete_status_of_room(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = room_delete::statuses_of_room(&state.core, room_id(&id)?).await?;
    if list.is_empty() {
        return Err(MatrixError::not_found("No delete task for room"));
    }
    Ok(Json(
        json!({ "results": list.iter().map(room_delete::Status::to_json).collect::<Vec<_>>() }),
    ))
}

/// # `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
pub async fn delete_status(
    State(state): State<AppState>,
    _: Admin,
    Path(delete_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let status = room_delete::status(&state.core, &delete_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("delete id not found"))?;
    let mut answer = status.to_json();
    if let Some(object) = answer.as_object_mut() {
        object.remove("delete_id");
    }
    Ok(Json(answer))
}
