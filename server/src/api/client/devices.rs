//! `/devices`, `/devices/{deviceId}`, `/delete_devices`.

use ruma::{
    api::client::device::{self, delete_device, delete_devices, get_device, get_devices, update_device},
    MilliSecondsSinceUnixEpoch, UInt,
};
use weft_core::storage::devices;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
    uia,
};

fn to_ruma(d: devices::Device) -> device::Device {
    let mut out = device::Device::new(d.device_id.into());
    out.display_name = d.display_name;
    out.last_seen_ip = d.last_seen_ip;
    out.last_seen_ts = d
        .last_seen_ts
        .and_then(|ts| UInt::new(ts as u64))
        .map(MilliSecondsSinceUnixEpoch);
    out
}

pub async fn list(state: AppState, req: Ruma<get_devices::v3::Request>) -> ApiResult<get_devices::v3::Response> {
    let user = req.sender()?;
    let list = devices::list(&state.db, user.user_id.as_str()).await?;
    Ok(get_devices::v3::Response::new(list.into_iter().map(to_ruma).collect()))
}

pub async fn get(state: AppState, req: Ruma<get_device::v3::Request>) -> ApiResult<get_device::v3::Response> {
    let user = req.sender()?;
    let device = devices::get(&state.db, user.user_id.as_str(), req.device_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("Device not found"))?;
    Ok(get_device::v3::Response::new(to_ruma(device)))
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
