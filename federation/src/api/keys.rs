//! The key server: this server's signing keys (`/_matrix/key/v2/server`).

use std::time::Duration;

use axum::Router;
use ruma::{api::federation::discovery::get_server_keys, canonical_json::CanonicalJsonValue, serde::Raw};
use serde_json::json;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

/// How long other servers may keep using the keys they fetched before asking again; Synapse's
/// default.
const KEY_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(server_keys)
}

/// # `GET /_matrix/key/v2/server`
///
/// The server's current verify key and its former ones (after `weft key rotate`), signed with
/// the current key, valid for `KEY_VALIDITY`.
async fn server_keys(
    state: AppState,
    _: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<get_server_keys::v2::Response> {
    let core = &state.core;
    let valid_until = weft_core::util::now_ms() + KEY_VALIDITY.as_millis() as i64;
    let old_verify_keys: serde_json::Map<String, serde_json::Value> = core
        .key
        .old_keys
        .iter()
        .map(|old| {
            (
                old.key_id.clone(),
                json!({ "key": old.public_key, "expired_ts": old.expired_ts }),
            )
        })
        .collect();
    let keys = json!({
        "server_name": core.server_name,
        "verify_keys": { &core.key.key_id: { "key": core.key.public_key_base64() } },
        "old_verify_keys": old_verify_keys,
        "valid_until_ts": valid_until,
    });
    let CanonicalJsonValue::Object(mut object) = ruma::canonical_json::to_canonical_value(&keys)
        .map_err(|e| MatrixError::unknown(format!("server keys: {e}")))?
    else {
        return Err(MatrixError::unknown("server keys are not an object"));
    };
    ruma::signatures::sign_json(core.server_name.as_str(), &core.key.keypair, &mut object)
        .map_err(|e| MatrixError::unknown(format!("signing the server keys: {e}")))?;
    let raw = Raw::from_json_string(serde_json::to_string(&object).map_err(|e| MatrixError::unknown(e.to_string()))?)
        .map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(get_server_keys::v2::Response::new(raw))
}
