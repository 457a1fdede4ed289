//! `/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token`: a LiveKit token for
//! this server's SFU, asked by another server for one of its users (MSC4195), so that they can
//! subscribe to what this server's users publish there.

use axum::Router;
use ruma::api::federation::rtc::livekit::get_token;
use weft_core::rtc;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{also_at, Ruma, RumaRoute},
    state::AppState,
};

use super::origin;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    // Also at the path MSC4195 gives for when it is stable.
    also_at(
        router.ruma(livekit_token),
        "/_matrix/federation/v1/rtc/livekit/get_token",
        livekit_token,
    )
}

/// # `POST /_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token`
/// # `POST /_matrix/federation/v1/rtc/livekit/get_token`
///
/// For a user of the asking server joined to the room as this server sees it; the token
/// subscribes only (users publish on their own server's SFU).
async fn livekit_token(
    state: AppState,
    req: Ruma<get_token::msc4195::Request>,
) -> ApiResult<get_token::msc4195::Response> {
    let origin = origin(&req)?;
    if req.user_id.server_name() != origin {
        return Err(MatrixError::forbidden(format!(
            "{origin} may only ask for tokens for its own users"
        )));
    }
    let sfu = match state.config.livekit.sfu() {
        Some(sfu) if rtc::is_our_sfu(&sfu, &req.url) => sfu,
        _ => {
            return Err(MatrixError::invalid_param(format!(
                "{} is not an SFU of this server",
                req.url
            )))
        }
    };
    let jwt = rtc::slot_token(
        &state.core,
        &sfu,
        &req.user_id,
        req.room_id.as_str(),
        &req.slot_id,
        &req.member_id,
    )
    .await?;
    Ok(get_token::msc4195::Response::new(jwt))
}
