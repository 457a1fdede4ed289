//! `/capabilities`.

use std::collections::BTreeMap;

use ruma::{
    api::client::discovery::get_capabilities::v3::{
        self as caps, Capabilities, RoomVersionStability, RoomVersionsCapability,
    },
    RoomVersionId,
};

use crate::{error::ApiResult, ruma_wrapper::Ruma, state::AppState};

/// The room versions this server can host; new rooms default to v11, as Synapse's do.
pub fn supported_room_versions() -> Vec<RoomVersionId> {
    use RoomVersionId::*;
    vec![V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
}

pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V11;

#[allow(deprecated)] // set_displayname/set_avatar_url are what clients of the versions we advertise read
pub async fn get_capabilities(_: AppState, req: Ruma<caps::Request>) -> ApiResult<serde_json::Value> {
    req.sender()?;
    let available: BTreeMap<RoomVersionId, RoomVersionStability> = supported_room_versions()
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    let mut capabilities = Capabilities::new();
    capabilities.room_versions = RoomVersionsCapability::new(DEFAULT_ROOM_VERSION, available);
    capabilities.change_password.enabled = true;
    capabilities.set_displayname.enabled = true;
    capabilities.set_avatar_url.enabled = true;
    capabilities.thirdparty_id_changes.enabled = false;
    // Ruma leaves out a capability at its default (`m.change_password` enabled); clients and
    // sytest look for it, so every capability set here is written out.
    let capabilities = serde_json::to_value(capabilities).map_err(weft_core::Error::internal)?;
    let mut body = serde_json::json!({ "capabilities": capabilities });
    body["capabilities"]["m.change_password"] = serde_json::json!({ "enabled": true });
    body["capabilities"]["m.set_displayname"] = serde_json::json!({ "enabled": true });
    body["capabilities"]["m.set_avatar_url"] = serde_json::json!({ "enabled": true });
    body["capabilities"]["m.3pid_changes"] = serde_json::json!({ "enabled": false });
    Ok(body)
}
