//! `/voip/turnServer`: TURN credentials for calls.

use ruma::api::client::voip::get_turn_server_info;
use serde_json::{json, Value};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// # `GET /_matrix/client/v3/voip/turnServer`
///
/// Credentials from the shared secret (expiring) or the fixed ones; an empty object when no
/// TURN server is configured, which clients take as "no TURN".
pub async fn turn_server(state: AppState, req: Ruma<get_turn_server_info::v3::Request>) -> ApiResult<Value> {
    let user = req.sender()?;
    let voip = &state.config.voip;
    if voip.turn_uris.is_empty() {
        return Ok(json!({}));
    }
    if user.is_guest && !voip.turn_allow_guests {
        return Err(MatrixError::forbidden("Guests may not use the TURN server"));
    }
    let (username, password, ttl) = if !voip.turn_shared_secret.is_empty() {
        let now_secs = (weft_core::util::now_ms() / 1000) as u64;
        let ttl = voip.turn_user_lifetime.as_secs();
        let (username, password) =
            weft_core::voip::turn_credentials(&voip.turn_shared_secret, user.user_id.as_str(), now_secs + ttl);
        (username, password, ttl)
    } else if !voip.turn_username.is_empty() {
        (voip.turn_username.clone(), voip.turn_password.clone(), 86_400)
    } else {
        return Ok(json!({}));
    };
    Ok(json!({ "username": username, "password": password, "uris": voip.turn_uris, "ttl": ttl }))
}
