//! `/_synapse/admin/v1/registration_tokens`: tokens for `m.login.registration_token`.

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use weft_core::{storage::registration_tokens, util::random_string};

use super::Admin;
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

pub async fn list(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    let tokens = registration_tokens::list(&state.db).await?;
    Ok(Json(json!({ "registration_tokens": tokens })))
}

#[derive(Deserialize, Default)]
pub struct NewToken {
    token: Option<String>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

pub async fn create(State(state): State<AppState>, _: Admin, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let new: NewToken = if body.is_empty() {
        NewToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| MatrixError::bad_json(e.to_string()))?
    };
    let token = new.token.unwrap_or_else(|| random_string(16));
    if token.is_empty() || token.len() > 64 || !token.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)) {
        return Err(MatrixError::invalid_param(
            "Token must be 1-64 characters of [A-Za-z0-9._~-]",
        ));
    }
    if new.uses_allowed.is_some_and(|u| u < 0) {
        return Err(MatrixError::invalid_param("uses_allowed must not be negative"));
    }
    let mut tx = state.db.write().await?;
    let created = registration_tokens::create(&mut tx, &token, new.uses_allowed, new.expiry_time).await?;
    tx.commit().await?;
    if !created {
        return Err(MatrixError::invalid_param("Token already exists"));
    }
    Ok(Json(json!({
        "token": token, "uses_allowed": new.uses_allowed, "pending": 0, "completed": 0, "expiry_time": new.expiry_time,
    })))
}
