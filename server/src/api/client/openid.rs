//! `/user/{userId}/openid/request_token`.

use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// # `POST /_matrix/client/v3/user/{userId}/openid/request_token`
pub async fn request_token(
    state: AppState,
    req: Ruma<request_openid_token::v3::Request>,
) -> ApiResult<request_openid_token::v3::Response> {
    let user = req.sender()?;
    if user.user_id != req.user_id {
        return Err(MatrixError::forbidden(
            "You may only request OpenID tokens for yourself",
        ));
    }
    let token = weft_core::openid::issue(&state.db, user.user_id.as_str()).await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        state.core.server_name.clone(),
        weft_core::openid::LIFETIME,
    ))
}
