//! `/account/whoami`, `/account/password`, `/account/deactivate`.

use ruma::api::client::account::{change_password, deactivate, whoami, ThirdPartyIdRemovalStatus};
use weft_core::accounts;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
    uia,
};

pub async fn whoami(_: AppState, req: Ruma<whoami::v3::Request>) -> ApiResult<whoami::v3::Response> {
    let user = req.sender()?;
    let mut response = whoami::v3::Response::new(user.user_id.clone(), user.is_guest);
    response.device_id = Some(user.device_id.clone());
    Ok(response)
}

pub async fn change_password(
    state: AppState,
    req: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    // Without an access token, the password stage identifies the user (spec: forgotten
    // passwords go through an email stage, which this server does not offer).
    let user = req.sender()?;
    uia::check(
        &state,
        &req,
        req.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(user.user_id.as_str()),
    )
    .await?;
    if req.new_password.is_empty() {
        return Err(MatrixError::invalid_param("Password must not be empty"));
    }
    accounts::change_password(
        &state.db,
        user.user_id.as_str(),
        &req.new_password,
        !req.logout_devices,
        Some(user.device_id.as_str()),
    )
    .await?;
    if req.logout_devices {
        weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    }
    Ok(change_password::v3::Response::new())
}

pub async fn deactivate(state: AppState, req: Ruma<deactivate::v3::Request>) -> ApiResult<deactivate::v3::Response> {
    let user = req.sender()?;
    uia::check(
        &state,
        &req,
        req.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(user.user_id.as_str()),
    )
    .await?;
    accounts::deactivate(&state.db, user.user_id.as_str()).await?;
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
