//! The admin API (Synapse-compatible paths where tooling expects them).

pub mod log_level;
pub mod register;
pub mod registration_tokens;

use axum::{
    extract::FromRequestParts,
    routing::{get, post},
    Router,
};

use crate::{
    error::MatrixError,
    ruma_wrapper::{authenticate, AuthNeed, AuthUser},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/_synapse/admin/v1/register",
            get(register::nonce).post(register::register),
        )
        .route("/_synapse/admin/v1/registration_tokens", get(registration_tokens::list))
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(registration_tokens::create),
        )
        .route("/_weft/admin/v1/log_level", get(log_level::get).put(log_level::set))
}

/// An authenticated server admin.
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = authenticate(state, parts, AuthNeed::Required)
            .await?
            .ok_or_else(|| MatrixError::missing_token("Missing access token"))?;
        if !user.is_admin {
            return Err(MatrixError::forbidden("You are not a server admin"));
        }
        Ok(Admin(user))
    }
}
