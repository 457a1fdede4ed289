//! Users: `/_synapse/admin/v2/users` (list, query, create/modify) and the per-user admin
//! endpoints (password reset, whois, rooms, account data, pushers, shadow-ban, suspension,
//! rate limit overrides, login as the user, deactivation), `username_available`,
//! `server_version`.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use serde_json::{json, Value};
use weft_core::{
    accounts,
    admin::{
        seen,
        users::{self, Changes, Flag, ListFilter},
    },
};

use super::{
    params::{self, Params},
    Admin,
};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// # `GET /_synapse/admin/v1/server_version`
pub async fn server_version(_: Admin) -> Json<Value> {
    Json(json!({ "server_version": concat!("weft ", env!("CARGO_PKG_VERSION")) }))
}

/// # `GET /_synapse/admin/v2/users`
///
/// Deactivated and locked users are left out unless `deactivated=true` / `locked=true`
/// (v2's meaning).
pub async fn list_v2(state: State<AppState>, admin: Admin, q: Query<Params>) -> ApiResult<Json<Value>> {
    list(state, admin, q, false).await
}

/// # `GET /_synapse/admin/v3/users`
///
/// `deactivated` and `locked` filter both ways, and all users are listed without them.
pub async fn list_v3(state: State<AppState>, admin: Admin, q: Query<Params>) -> ApiResult<Json<Value>> {
    list(state, admin, q, true).await
}

async fn list(State(state): State<AppState>, _: Admin, Query(q): Query<Params>, v3: bool) -> ApiResult<Json<Value>> {
    let page = params::page(&q, false)?;
    let deactivated = match (params::flag(&q, "deactivated")?, v3) {
        (flag, true) => flag,
        (Some(true), false) => None,
        (_, false) => Some(false),
    };
    let filter = ListFilter {
        name: q.get("name").filter(|s| !s.is_empty()).cloned(),
        user_id: q.get("user_id").filter(|s| !s.is_empty()).cloned(),
        // Guests are listed unless `guests=false`.
        guests: params::flag(&q, "guests")?.filter(|g| !g),
        deactivated,
        admins: params::flag(&q, "admins")?,
        locked: match (params::flag(&q, "locked")?, v3) {
            (flag, true) => flag,
            (Some(true), false) => None,
            (_, false) => Some(false),
        },
        suspended: params::flag(&q, "suspended")?,
        shadow_banned: params::flag(&q, "shadow_banned")?,
    };
    let order_by = q.get("order_by").map(String::as_str).unwrap_or("name");
    let (list, total) = users::list(&state.db, &filter, order_by, page).await?;
    let next = page.next_token(list.len(), total);
    let mut out = json!({ "users": list, "total": total });
    if let Some(next) = next {
        out["next_token"] = json!(next);
    }
    Ok(Json(out))
}

/// # `GET /_synapse/admin/v2/users/{userId}`
pub async fn query(State(state): State<AppState>, _: Admin, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let user = users::query(&state.db, user_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("User not found"))?;
    Ok(Json(user))
}

/// # `PUT /_synapse/admin/v2/users/{userId}`
///
/// Creates the user (201) or changes it (200); answers the user as `query` does. Third-party
/// and external IDs are accepted and not kept.
pub async fn create_or_modify(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let string = |name: &str| -> ApiResult<Option<String>> {
        match &body[name] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(MatrixError::invalid_param(format!("{name} must be a string"))),
        }
    };
    let nullable = |name: &str| -> ApiResult<Option<Option<String>>> {
        match body.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Ok(Some((!s.is_empty()).then(|| s.clone()))),
            Some(_) => Err(MatrixError::invalid_param(format!("{name} must be a string"))),
        }
    };
    let flag = |name: &str| -> ApiResult<Option<bool>> {
        match &body[name] {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            _ => Err(MatrixError::invalid_param(format!("{name} must be a boolean"))),
        }
    };
    let password = string("password")?;
    if password.as_ref().is_some_and(|p| p.len() > 512) {
        return Err(MatrixError::invalid_param("Invalid password"));
    }
    let changes = Changes {
        password,
        logout_devices: flag("logout_devices")?.unwrap_or(true),
        displayname: nullable("displayname")?,
        avatar_url: nullable("avatar_url")?,
        admin: flag("admin")?,
        deactivated: flag("deactivated")?,
        locked: flag("locked")?,
        user_type: nullable("user_type")?,
    };
    let created = users::create_or_modify(&state.core, &admin.user_id, &user_id, changes).await?;
    let user = users::query(&state.db, user_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("User not found"))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(user)))
}

/// # `POST /_synapse/admin/v1/reset_password/{userId}`
pub async fn reset_password(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let password = body["new_password"]
        .as_str()
        .ok_or_else(|| MatrixError::missing_param("Missing new_password"))?;
    let logout = body["logout_devices"].as_bool().unwrap_or(true);
    users::local_user(&state.core, &user_id).await?;
    accounts::change_password(&state.db, user_id.as_str(), password, !logout, None).await?;
    Ok(Json(json!({})))
}

/// # `GET /_synapse/admin/v1/whois/{userId}`
pub async fn whois(State(state): State<AppState>, _: Admin, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    Ok(Json(seen::whois(&state.db, user_id.as_str()).await?))
}

/// # `GET /_synapse/admin/v1/users/{userId}/joined_rooms`
pub async fn joined_rooms(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let rooms = users::joined_rooms(&state.core, &params::user_id(&user_id)?).await?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// # `GET /_synapse/admin/v1/users/{userId}/memberships`
pub async fn memberships(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let memberships = users::memberships(&state.core, &params::user_id(&user_id)?).await?;
    Ok(Json(json!({ "memberships": memberships })))
}

/// # `GET /_synapse/admin/v1/users/{userId}/accountdata`
pub async fn account_data(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let data = users::account_data(&state.core, &params::user_id(&user_id)?).await?;
    Ok(Json(json!({ "account_data": data })))
}

/// # `GET /_synapse/admin/v1/users/{userId}/pushers`
pub async fn pushers(State(state): State<AppState>, _: Admin, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    let pushers = users::pushers(&state.core, &params::user_id(&user_id)?).await?;
    Ok(Json(json!({ "total": pushers.len(), "pushers": pushers })))
}

/// # `POST /_synapse/admin/v1/users/{userId}/shadow_ban`
pub async fn shadow_ban(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    users::set(&state.core, &params::user_id(&user_id)?, Flag::ShadowBanned, true).await?;
    Ok(Json(json!({})))
}

/// # `DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`
pub async fn unshadow_ban(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    users::set(&state.core, &params::user_id(&user_id)?, Flag::ShadowBanned, false).await?;
    Ok(Json(json!({})))
}

/// # `PUT /_synapse/admin/v1/suspend/{userId}`
///
/// `{"suspend": true}` suspends (the user may read but not send), `false` lifts it.
pub async fn suspend(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let suspend = body["suspend"]
        .as_bool()
        .ok_or_else(|| MatrixError::missing_param("suspend must be a boolean"))?;
    users::set(&state.core, &user_id, Flag::Suspended, suspend).await?;
    Ok(Json(json!({ format!("user_{user_id}_suspended"): suspend })))
}

/// # `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`
pub async fn get_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let limits = users::ratelimit_override(&state.core, &params::user_id(&user_id)?).await?;
    Ok(Json(match limits {
        Some((mps, burst)) => json!({ "messages_per_second": mps, "burst_count": burst }),
        None => json!({}),
    }))
}

/// # `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`
///
/// Absent numbers are 0; 0 messages per second exempts the user.
pub async fn set_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let number = |name: &str| -> ApiResult<i64> {
        match &body[name] {
            Value::Null => Ok(0),
            v => v
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| MatrixError::invalid_param(format!("{name} must be a non-negative integer"))),
        }
    };
    let (mps, burst) = (number("messages_per_second")?, number("burst_count")?);
    users::set_ratelimit_override(&state.core, &user_id, Some((mps, burst))).await?;
    Ok(Json(json!({ "messages_per_second": mps, "burst_count": burst })))
}

/// # `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`
pub async fn delete_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    users::set_ratelimit_override(&state.core, &params::user_id(&user_id)?, None).await?;
    Ok(Json(json!({})))
}

/// # `POST /_synapse/admin/v1/users/{userId}/login`
///
/// Only when `admin.allow_login_as_user` is set; every use is logged.
pub async fn login_as(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    if !state.config.admin.allow_login_as_user {
        return Err(MatrixError::forbidden(
            "Logging in as another user is disabled on this server",
        ));
    }
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let valid_until_ms = match &body["valid_until_ms"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .ok_or_else(|| MatrixError::invalid_param("valid_until_ms must be an integer"))?,
        ),
    };
    let token = users::login_as(&state.core, &admin.user_id, &user_id, valid_until_ms).await?;
    tracing::warn!(admin = %admin.user_id, user = %user_id, "an admin logged in as a user");
    Ok(Json(json!({ "access_token": token })))
}

/// # `POST /_synapse/admin/v1/deactivate/{userId}`
///
/// `{"erase": true}` also erases: the user's events are served redacted from now on.
pub async fn deactivate(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    let body = params::body(&body)?;
    let erase = match &body["erase"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return Err(MatrixError::invalid_param("erase must be a boolean")),
    };
    users::deactivate(&state.core, &user_id, erase).await?;
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

/// # `GET /_synapse/admin/v1/username_available`
pub async fn username_available(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<Params>,
) -> ApiResult<Json<Value>> {
    let localpart = q
        .get("username")
        .ok_or_else(|| MatrixError::missing_param("Missing username"))?;
    users::username_available(&state.core, localpart).await?;
    Ok(Json(json!({ "available": true })))
}
