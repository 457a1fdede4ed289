//! `/devices`, `/devices/{deviceId}`, `/delete_devices`.

use ruma::api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device};
use serde_json::{json, Value};
use weft_core::storage::devices;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
    uia,
};

/// A device as clients see it. Built here rather than with ruma's `Device`, which sends
/// `null` for an unset `display_name` or `last_seen_ip` where the spec says to omit them.
fn device_json(d: devices::Device) -> Value {
    let mut out = json!({ "device_id": d.device_id });
    if let Some(name) = d.display_name {
        out["display_name"] = json!(name);
    }
    if let Some(ip) = d.last_seen_ip {
        out["last_seen_ip"] = json!(ip);
    }
    if let Some(ts) = d.last_seen_ts {
        out["last_seen_ts"] = json!(ts);
    }
    out
}

pub async fn list(state: AppState, req: Ruma<get_devices::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let list = devices::list(&state.db, user.user_id.as_str()).await?;
    Ok(json!({ "devices": list.into_iter().map(device_json).collect::<Vec<_>>() }))
}

pub async fn get(state: AppState, req: Ruma<get_device::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let device = devices::get(&state.db, user.user_id.as_str(), req.device_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("Device not found"))?;
    Ok(device_json(device))
}

pub async fn update(state: AppState, req: Ruma<update_device::v3::Request>) -> ApiResult<update_device::v3::Response> {
    let user = req.sender()?;
    let mut tx = state.db.write().await?;
    let found = devices::set_display_name(
        &mut tx,
        user.user_id.as_str(),
        req.device_id.as_str(),
        req.display_name.as_deref(),
    )
    .await?;
    tx.commit().await?;
    if !found {
        return Err(MatrixError::not_found("Device not found"));
    }
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(update_device::v3::Response::new())
}

pub async fn delete(state: AppState, req: Ruma<delete_device::v3::Request>) -> ApiResult<delete_device::v3::Response> {
    let user = req.sender()?;
    if devices::get(&state.db, user.user_id.as_str(), req.device_id.as_str())
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found("Device not found"));
    }
    uia::check(
        &state,
        &req,
        req.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(user.user_id.as_str()),
    )
    .await?;
    let mut tx = state.db.write().await?;
    devices::delete(&mut tx, user.user_id.as_str(), req.device_id.as_str()).await?;
    tx.commit().await?;
    // Other users' clients must learn the device is gone.
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_many(
    state: AppState,
    req: Ruma<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    let user = req.sender()?;
    uia::check(
        &state,
        &req,
        req.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(user.user_id.as_str()),
    )
    .await?;
    let mut tx = state.db.write().await?;
    for device_id in &req.devices {
        devices::delete(&mut tx, user.user_id.as_str(), device_id.as_str()).await?;
    }
    tx.commit().await?;
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(delete_devices::v3::Response::new())
}
