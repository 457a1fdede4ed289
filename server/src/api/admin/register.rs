//! `/_synapse/admin/v1/register`: account creation with the shared secret (HMAC-SHA1 over
//! nonce, user, password and admin flag), as Synapse offers it to tooling and test suites.

use axum::{extract::State, Json};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;
use weft_core::{
    accounts::{self, SessionRequest},
    util::{now_ms, random_string},
};

use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// Nonces are single-use and expire after this long.
const NONCE_LIFETIME_MS: i64 = 60_000;

pub async fn nonce(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    let nonce = random_string(32);
    sqlx::query("INSERT INTO admin_register_nonces (nonce, created_ts) VALUES ($1, $2)")
        .bind(&nonce)
        .bind(now_ms())
        .execute(state.db.pool())
        .await
        .map_err(weft_core::Error::from)?;
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
pub struct Body {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

pub async fn register(State(state): State<AppState>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    enabled(&state)?;
    let body: Body = serde_json::from_slice(&body).map_err(|e| {
        if serde_json::from_slice::<Value>(&body).is_err() {
            MatrixError::not_json("Content not JSON")
        } else {
            MatrixError::bad_json(e.to_string())
        }
    })?;
    let taken = sqlx::query("DELETE FROM admin_register_nonces WHERE nonce = $1 AND created_ts > $2")
        .bind(&body.nonce)
        .bind(now_ms() - NONCE_LIFETIME_MS)
        .execute(state.db.pool())
        .await
        .map_err(weft_core::Error::from)?;
    if taken.rows_affected() != 1 {
        return Err(MatrixError::unknown("Unrecognised nonce").with_status(http::StatusCode::BAD_REQUEST));
    }
    if !mac_matches(&state.config.registration.shared_secret, &body) {
        return Err(MatrixError::forbidden("HMAC incorrect"));
    }
    let user_id = accounts::user_id_for(&body.username.to_lowercase(), &state.config.server_name)?;
    let session = accounts::register(
        &state.db,
        accounts::NewAccount {
            user_id: &user_id,
            password: Some(&body.password),
            is_admin: body.admin,
            displayname: Some(body.displayname.as_deref().unwrap_or(&body.username)),
            session: Some(SessionRequest::default()),
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| MatrixError::unknown("No session issued"))?;
    Ok(Json(json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.config.server_name,
    })))
}

fn enabled(state: &AppState) -> ApiResult<()> {
    if state.config.registration.shared_secret.is_empty() {
        return Err(MatrixError::forbidden("Shared secret registration is not enabled"));
    }
    Ok(())
}

fn mac_matches(secret: &str, body: &Body) -> bool {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(body.username.as_bytes());
    mac.update(b"\0");
    mac.update(body.password.as_bytes());
    mac.update(b"\0");
    mac.update(if body.admin { b"admin" as &[u8] } else { b"notadmin" });
    if let Some(user_type) = &body.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    let Ok(given) = hex::decode(&body.mac) else {
        return false;
    };
    mac.verify_slice(&given).is_ok()
}
