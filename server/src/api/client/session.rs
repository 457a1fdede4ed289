//! `/login`, `/logout`, `/logout/all`, `/refresh`.

use ruma::api::client::{
    session::{get_login_types, login, logout, logout_all, refresh_token},
    uiaa::UserIdentifier,
};
use weft_core::accounts::{self, SessionRequest};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// Turns what a user typed (localpart or full ID) into a user ID on this server.
pub fn qualify_user(state: &AppState, user: &str) -> String {
    if user.starts_with('@') {
        user.to_owned()
    } else {
        format!("@{}:{}", user.to_lowercase(), state.config.server_name)
    }
}

pub async fn login_types(
    _: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> ApiResult<get_login_types::v3::Response> {
    use get_login_types::v3::{ApplicationServiceLoginType, LoginType, PasswordLoginType};
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ]))
}

#[allow(deprecated)]
pub async fn login(state: AppState, req: Ruma<login::v3::Request>) -> ApiResult<login::v3::Response> {
    let user_id = match &req.login_info {
        login::v3::LoginInfo::Password(info) => {
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => return Err(MatrixError::forbidden("Invalid username or password")),
            };
            let user_id = qualify_user(&state, &user);
            if !accounts::check_password(&state.db, &user_id, &info.password).await? {
                return Err(MatrixError::forbidden("Invalid username or password"));
            }
            user_id
        }
        login::v3::LoginInfo::ApplicationService(info) => {
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
                (None, Some(user)) => user.clone(),
                _ => return Err(MatrixError::missing_param("Missing identifier")),
            };
            appservice_login(&state, &req, &qualify_user(&state, &user)).await?
        }
        _ => {
            return Err(MatrixError::unknown("Unsupported login type").with_status(http::StatusCode::BAD_REQUEST));
        }
    };
    let session = accounts::login(
        &state.db,
        &user_id,
        SessionRequest {
            device_id: req.device_id.as_ref().map(|d| d.to_string()),
            display_name: req.initial_device_display_name.clone(),
            ip: req.ip.clone(),
            refreshable_lifetime_ms: req
                .refresh_token
                .then(|| state.config.access_token_lifetime.as_millis() as i64),
        },
    )
    .await?;
    let mut response = login::v3::Response::new(
        session
            .user_id
            .try_into()
            .map_err(|_| MatrixError::forbidden("Invalid user ID"))?,
        session.access_token,
        session.device_id.into(),
    );
    response.refresh_token = session.refresh_token;
    response.expires_in = session
        .expires_in_ms
        .map(|ms| std::time::Duration::from_millis(ms as u64));
    Ok(response)
}

/// `m.login.application_service`: an appservice (by its `as_token`) logs in one of its
/// namespace's registered users, for a device of its own (an encrypting bridge's puppets).
async fn appservice_login(state: &AppState, req: &Ruma<login::v3::Request>, user_id: &str) -> ApiResult<String> {
    let Some(service) = req.user.as_ref().and_then(|u| u.appservice.as_ref()) else {
        return Err(MatrixError::missing_token(
            "m.login.application_service needs the appservice's as_token",
        ));
    };
    if !service.is_user_in_namespace(user_id) {
        return Err(MatrixError::forbidden(format!(
            "{user_id} is not in the application service's namespace"
        )));
    }
    match weft_core::storage::users::get(&state.db, user_id).await? {
        Some(user) if !user.deactivated => Ok(user_id.to_owned()),
        _ => Err(MatrixError::forbidden(format!("{user_id} is not registered"))),
    }
}

pub async fn logout(state: AppState, req: Ruma<logout::v3::Request>) -> ApiResult<logout::v3::Response> {
    let user = req.sender()?;
    accounts::logout(&state.db, user.user_id.as_str(), user.device_id.as_str()).await?;
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(state: AppState, req: Ruma<logout_all::v3::Request>) -> ApiResult<logout_all::v3::Response> {
    let user = req.sender()?;
    accounts::logout_all(&state.db, user.user_id.as_str()).await?;
    weft_core::e2ee::device_lists::notify(&state.core, user.user_id.as_str()).await?;
    Ok(logout_all::v3::Response::new())
}

pub async fn refresh(state: AppState, req: Ruma<refresh_token::v3::Request>) -> ApiResult<refresh_token::v3::Response> {
    let lifetime = state.config.access_token_lifetime.as_millis() as i64;
    let session = accounts::refresh(&state.db, &req.refresh_token, lifetime).await?;
    let mut response = refresh_token::v3::Response::new(session.access_token);
    response.refresh_token = session.refresh_token;
    response.expires_in_ms = Some(std::time::Duration::from_millis(lifetime as u64));
    Ok(response)
}
