//! `/_matrix/federation/v1/user/...`: this server's users' devices and keys, for other servers
//! whose users encrypt to them. Only local users are answered; others' are not ours to tell.
//! These name no room, so no room's server ACL applies; the request must be signed (checked
//! before the handler runs, as for every endpoint).

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt,
};
use weft_core::{
    e2ee::keys::{self, QueryResult},
    outbox,
};
use weft_http::{
    error::{ApiResult, MatrixError},
    keys::raw,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use super::origin;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(devices).ruma(query).ruma(claim)
}

/// # `GET /_matrix/federation/v1/user/devices/{userId}`
///
/// The user's devices with keys, cross-signing keys, and the stream ID of the last
/// `m.device_list_update` sent about them: updates after it chain on to this answer.
async fn devices(state: AppState, req: Ruma<get_devices::v1::Request>) -> ApiResult<get_devices::v1::Response> {
    origin(&req)?;
    if !state.core.is_local(&req.user_id) {
        return Err(MatrixError::invalid_param("That user is not on this server"));
    }
    let user_id = req.user_id.as_str();
    let mut conn = state.db.conn().await?;
    // The stream ID first: the devices read after it are at least as new.
    let stream_id = outbox::device_lists::stream_id(&mut conn, user_id).await?;
    let mut result = QueryResult::default();
    keys::local_user_keys(&mut conn, "", user_id, &[], &mut result).await?;
    let mut response =
        get_devices::v1::Response::new(req.user_id.clone(), UInt::try_from(stream_id).unwrap_or_default());
    for (device_id, keys) in result.device_keys.remove(user_id).unwrap_or_default() {
        let mut device = get_devices::v1::UserDevice::new(OwnedDeviceId::from(device_id), raw(&keys)?);
        device.device_display_name = keys["unsigned"]["device_display_name"].as_str().map(str::to_owned);
        response.devices.push(device);
    }
    response.master_key = result.master_keys.remove(user_id).map(|k| raw(&k)).transpose()?;
    response.self_signing_key = result.self_signing_keys.remove(user_id).map(|k| raw(&k)).transpose()?;
    Ok(response)
}

/// # `POST /_matrix/federation/v1/user/keys/query`
async fn query(state: AppState, req: Ruma<get_keys::v1::Request>) -> ApiResult<get_keys::v1::Response> {
    origin(&req)?;
    let requested: BTreeMap<String, Vec<String>> = req
        .device_keys
        .iter()
        .map(|(u, ds)| (u.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    // An empty requester: another server sees no user-signing key, and on master keys only
    // their owners' signatures.
    let result = keys::query(&state.core, "", &requested).await?;
    let typed = weft_http::keys::typed(&result)?;
    let mut response = get_keys::v1::Response::default();
    response.device_keys = typed.device_keys;
    response.master_keys = typed.master_keys;
    response.self_signing_keys = typed.self_signing_keys;
    Ok(response)
}

/// # `POST /_matrix/federation/v1/user/keys/claim`
async fn claim(state: AppState, req: Ruma<claim_keys::v1::Request>) -> ApiResult<claim_keys::v1::Response> {
    origin(&req)?;
    let requested: BTreeMap<String, BTreeMap<String, String>> = req
        .one_time_keys
        .iter()
        .map(|(u, ds)| {
            (
                u.to_string(),
                ds.iter().map(|(d, alg)| (d.to_string(), alg.to_string())).collect(),
            )
        })
        .collect();
    let claimed = keys::claim(&state.core, &requested).await?;
    let mut out = BTreeMap::new();
    for (user_id, devices) in claimed {
        let Ok(user_id) = OwnedUserId::try_from(user_id) else {
            continue;
        };
        let mut per_device = BTreeMap::new();
        for (device_id, keys) in devices {
            let mut per_key = BTreeMap::new();
            for (key_id, key) in keys {
                if let Ok(key_id) = OwnedOneTimeKeyId::try_from(key_id) {
                    per_key.insert(key_id, raw(&key)?);
                }
            }
            per_device.insert(OwnedDeviceId::from(device_id), per_key);
        }
        out.insert(user_id, per_device);
    }
    Ok(claim_keys::v1::Response::new(out))
}
