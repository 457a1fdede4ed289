//! A user's devices: `/_synapse/admin/v2/users/{userId}/devices[/{deviceId}]` and
//! `.../delete_devices`.

use axum::{
    body::Bytes,
    extract::{Path, State},
    Json,
};
use serde_json::{json, Value};
use weft_core::admin::{devices, users};

use super::{params, Admin};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// # `GET /_synapse/admin/v2/users/{userId}/devices`
pub async fn list(State(state): State<AppState>, _: Admin, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let list = devices::list(&state.core, user_id.as_str()).await?;
    Ok(Json(json!({ "total": list.len(), "devices": list })))
}

/// # `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub async fn get(
    State(state): State<AppState>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let device = devices::get(&state.core, user_id.as_str(), &device_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Device not found"))?;
    Ok(Json(device))
}

/// # `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub async fn update(
    State(state): State<AppState>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let body = params::body(&body)?;
    let name = match &body["display_name"] {
        Value::Null => None,
        Value::String(s) => Some(s.as_str()),
        _ => return Err(MatrixError::invalid_param("display_name must be a string")),
    };
    if !devices::rename(&state.core, user_id.as_str(), &device_id, name).await? {
        return Err(MatrixError::not_found("Device not found"));
    }
    Ok(Json(json!({})))
}

/// # `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    devices::delete(&state.core, user_id.as_str(), &[device_id]).await?;
    Ok(Json(json!({})))
}

/// # `POST /_synapse/admin/v2/users/{userId}/delete_devices`
pub async fn delete_many(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user_id = params::user_id(&user_id)?;
    users::local_user(&state.core, &user_id).await?;
    let body = params::body(&body)?;
    let ids: Vec<String> = serde_json::from_value(body["devices"].clone())
        .map_err(|_| MatrixError::bad_json("devices must be a list of device IDs"))?;
    devices::delete(&state.core, user_id.as_str(), &ids).await?;
    Ok(Json(json!({})))
}
