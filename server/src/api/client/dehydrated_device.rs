//! Dehydrated devices (MSC3814, unstable prefix `org.matrix.msc3814.v1`).

use axum::Router;
use ruma::{
    api::client::dehydrated_device::{
        delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
    },
    OwnedDeviceId,
};
use weft_core::e2ee::{dehydrated, keys};

use super::keys::{key_list, object, raw};
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(put).ruma(get).ruma(delete).ruma(events)
}

async fn put(
    state: AppState,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> ApiResult<put_dehydrated_device::unstable::Response> {
    let user = req.sender()?;
    let request = dehydrated::Dehydrate {
        device_id: req.device_id.to_string(),
        display_name: req.initial_device_display_name.clone(),
        device_data: object(&req.device_data, "device_data")?,
        upload: keys::Upload {
            device_keys: Some(object(&req.device_keys, "device_keys")?),
            one_time_keys: key_list(&req.one_time_keys)?,
            fallback_keys: key_list(&req.fallback_keys)?,
        },
    };
    dehydrated::put(&state.core, user.user_id.as_str(), &request).await?;
    Ok(put_dehydrated_device::unstable::Response::new(req.device_id.clone()))
}

async fn get(
    state: AppState,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> ApiResult<get_dehydrated_device::unstable::Response> {
    let user = req.sender()?;
    let (device_id, data) = dehydrated::get(&state.core, user.user_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("No dehydrated device"))?;
    Ok(get_dehydrated_device::unstable::Response::new(
        OwnedDeviceId::from(device_id),
        raw(&data)?,
    ))
}

async fn delete(
    state: AppState,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<delete_dehydrated_device::unstable::Response> {
    let user = req.sender()?;
    let device_id = dehydrated::delete(&state.core, user.user_id.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found("No dehydrated device"))?;
    Ok(delete_dehydrated_device::unstable::Response::new(OwnedDeviceId::from(
        device_id,
    )))
}

async fn events(
    state: AppState,
    req: Ruma<get_events::unstable::Request>,
) -> ApiResult<get_events::unstable::Response> {
    let user = req.sender()?;
    let (events, next) = dehydrated::events(
        &state.core,
        user.user_id.as_str(),
        req.device_id.as_str(),
        req.next_batch.as_deref(),
    )
    .await?;
    let mut response = get_events::unstable::Response::new(events.iter().map(raw).collect::<ApiResult<_>>()?);
    response.next_batch = Some(next);
    Ok(response)
}
