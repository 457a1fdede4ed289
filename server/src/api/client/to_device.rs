//! `PUT /sendToDevice/{eventType}/{txnId}`.

use axum::Router;
use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};
use weft_core::e2ee::{self, to_device};

use crate::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(send)
}

async fn send(
    state: AppState,
    req: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    let user = req.sender()?;
    let mut messages = Vec::new();
    for (recipient, devices) in &req.messages {
        for (target, content) in devices {
            let target = match target {
                DeviceIdOrAllDevices::DeviceId(d) => to_device::Target::Device(d.to_string()),
                DeviceIdOrAllDevices::AllDevices => to_device::Target::AllDevices,
            };
            let content = e2ee::parse_object(content.json().get(), "to-device content")?;
            messages.push((recipient.to_string(), target, content));
        }
    }
    let event_type = req.event_type.to_string();
    let send = to_device::Send {
        sender: user.user_id.as_str(),
        sender_device: user.device_id.as_str(),
        txn_id: req.txn_id.as_str(),
        event_type: &event_type,
        messages,
    };
    to_device::send(&state.core, &send).await?;
    Ok(send_event_to_device::v3::Response::new())
}
