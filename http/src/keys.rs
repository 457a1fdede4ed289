//! Core's device and cross-signing keys as ruma's response types carry them, for the client
//! and federation key queries alike.

use std::collections::BTreeMap;

use ruma::{
    encryption::{CrossSigningKey, DeviceKeys},
    serde::Raw,
    OwnedDeviceId, OwnedUserId,
};
use serde_json::Value;
use weft_core::e2ee::keys::QueryResult;

use crate::error::{ApiResult, MatrixError};

/// A stored JSON object as the `Raw` a response holds.
pub fn raw<T>(value: &Value) -> ApiResult<Raw<T>> {
    Raw::from_json_string(value.to_string()).map_err(|e| MatrixError::unknown(e.to_string()))
}

/// The keys of a query's answer, typed; user IDs that do not parse are left out.
#[derive(Default)]
pub struct TypedKeys {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
}

/// `result`'s keys (its `failures` stay with the caller).
pub fn typed(result: &QueryResult) -> ApiResult<TypedKeys> {
    let mut typed = TypedKeys::default();
    for (user_id, devices) in &result.device_keys {
        let Ok(user_id) = OwnedUserId::try_from(user_id.as_str()) else {
            continue;
        };
        let mut out = BTreeMap::new();
        for (device_id, keys) in devices {
            out.insert(OwnedDeviceId::from(device_id.as_str()), raw(keys)?);
        }
        typed.device_keys.insert(user_id, out);
    }
    for (target, source) in [
        (&mut typed.master_keys, &result.master_keys),
        (&mut typed.self_signing_keys, &result.self_signing_keys),
        (&mut typed.user_signing_keys, &result.user_signing_keys),
    ] {
        for (user_id, key) in source {
            if let Ok(user_id) = OwnedUserId::try_from(user_id.as_str()) {
                target.insert(user_id, raw(key)?);
            }
        }
    }
    Ok(typed)
}
