//! `/_matrix/federation/v1/openid/userinfo`: who an OpenID token stands for.

use axum::Router;
use ruma::{api::federation::openid::get_openid_userinfo, OwnedUserId};
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(userinfo)
}

/// # `GET /_matrix/federation/v1/openid/userinfo`
///
/// Asked by third parties with a token the user gave them, not by servers: no signature.
async fn userinfo(
    state: AppState,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> ApiResult<get_openid_userinfo::v1::Response> {
    let user = weft_core::openid::user_of(&state.db, &req.access_token)
        .await?
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .ok_or_else(|| MatrixError {
            status: axum::http::StatusCode::UNAUTHORIZED,
            errcode: "M_UNKNOWN_TOKEN".into(),
            message: "Unknown or expired OpenID token".into(),
            extra: None,
        })?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
