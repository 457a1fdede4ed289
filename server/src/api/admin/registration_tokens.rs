//! `/_synapse/admin/v1/registration_tokens`: tokens for `m.login.registration_token`.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use weft_core::{
    storage::registration_tokens::{self, Change},
    util::random_string,
};

use super::Admin;
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// All tokens, or with `valid=true`/`false` only those that can (or cannot) be used now.
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let valid = match q.get("valid").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(MatrixError::invalid_param("valid must be true or false")),
    };
    let tokens: Vec<_> = registration_tokens::list(&state.db)
        .await?
        .into_iter()
        .filter(|t| valid.is_none_or(|v| t.is_valid() == v))
        .collect();
    Ok(Json(json!({ "registration_tokens": tokens })))
}

pub async fn get(State(state): State<AppState>, _: Admin, Path(token): Path<String>) -> ApiResult<Json<Value>> {
    answer(&state, &token).await
}

/// The token as the admin API shows it, or 404.
async fn answer(state: &AppState, token: &str) -> ApiResult<Json<Value>> {
    let found = registration_tokens::get(&state.db, token)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such registration token"))?;
    Ok(Json(json!(found)))
}

/// Changes `uses_allowed` and `expiry_time`: a field left out stays, `null` removes the limit.
pub async fn update(
    State(state): State<AppState>,
    _: Admin,
    Path(token): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let body: serde_json::Map<String, Value> = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| MatrixError::bad_json(e.to_string()))?
    };
    let field = |name: &str| -> ApiResult<Change> {
        match body.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(Some(n))),
                _ => Err(MatrixError::invalid_param(format!(
                    "{name} must be a non-negative integer or null"
                ))),
            },
        }
    };
    let (uses_allowed, expiry_time) = (field("uses_allowed")?, field("expiry_time")?);
    let mut tx = state.db.write().await?;
    let changed = registration_tokens::update(&mut tx, &token, uses_allowed, expiry_time).await?;
    tx.commit().await?;
    if !changed {
        return Err(MatrixError::not_found("No such registration token"));
    }
    answer(&state, &token).await
}

pub async fn delete(State(state): State<AppState>, _: Admin, Path(token): Path<String>) -> ApiResult<Json<Value>> {
    let mut tx = state.db.write().await?;
    let deleted = registration_tokens::delete(&mut tx, &token).await?;
    tx.commit().await?;
    if !deleted {
        return Err(MatrixError::not_found("No such registration token"));
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
pub struct NewToken {
    token: Option<String>,
    /// The length of a generated token.
    length: Option<usize>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

pub async fn create(State(state): State<AppState>, _: Admin, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let new: NewToken = if body.is_empty() {
        NewToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| MatrixError::bad_json(e.to_string()))?
    };
    if new.length.is_some_and(|l| l == 0 || l > 64) {
        return Err(MatrixError::invalid_param("length must be between 1 and 64"));
    }
    let token = new.token.unwrap_or_else(|| random_string(new.length.unwrap_or(16)));
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
