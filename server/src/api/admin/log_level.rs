//! `/_weft/admin/v1/log_level`: the log filter in force, changed without a restart.

use axum::{body::Bytes, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Admin;
use crate::{
    error::{ApiResult, MatrixError},
    logging,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLevel {
    /// A tracing filter: `info`, `debug`, `weft=debug,sqlx=warn`, ...
    level: String,
}

/// # `GET /_weft/admin/v1/log_level`
pub async fn get(_: Admin) -> ApiResult<Json<Value>> {
    let level = logging::level().ok_or_else(|| MatrixError::not_found("This process does not manage its logging"))?;
    Ok(Json(json!({ "level": level })))
}

/// # `PUT /_weft/admin/v1/log_level`
///
/// Takes `{"level": "<filter>"}` and applies it at once, until the next restart (or SIGHUP,
/// which applies the configuration file's `log.level`).
pub async fn set(Admin(user): Admin, body: Bytes) -> ApiResult<Json<Value>> {
    let value: Value = serde_json::from_slice(&body).map_err(|e| MatrixError::not_json(e.to_string()))?;
    let new: NewLevel = serde_json::from_value(value).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    logging::validate(&new.level).map_err(MatrixError::invalid_param)?;
    logging::set_level(&new.level).map_err(MatrixError::not_found)?;
    tracing::warn!(admin = %user.user_id, level = %new.level, "log level changed by an admin");
    Ok(Json(json!({ "level": new.level.trim() })))
}
