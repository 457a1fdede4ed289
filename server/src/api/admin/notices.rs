//! Server notices: `/_synapse/admin/v1/send_server_notice[/{txnId}]`.

use axum::{
    body::Bytes,
    extract::{Path, State},
    Json,
};
use serde_json::{json, Value};
use weft_core::admin::notices::{self, Notice};

use super::{params, Admin};
use crate::{
    error::{ApiResult, MatrixError},
    state::AppState,
};

/// # `POST /_synapse/admin/v1/send_server_notice`
pub async fn send(State(state): State<AppState>, Admin(admin): Admin, body: Bytes) -> ApiResult<Json<Value>> {
    send_notice(&state, admin.user_id.as_str(), None, &body).await
}

/// # `PUT /_synapse/admin/v1/send_server_notice/{txnId}`
pub async fn send_txn(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    send_notice(&state, admin.user_id.as_str(), Some(&txn_id), &body).await
}

async fn send_notice(state: &AppState, admin: &str, txn_id: Option<&str>, body: &[u8]) -> ApiResult<Json<Value>> {
    let Some(sender) = state.config.server_notices.sender() else {
        return Err(MatrixError::unknown("Server notices are not enabled on this server")
            .with_status(axum::http::StatusCode::BAD_REQUEST));
    };
    let body = params::body(body)?;
    let user_id = params::user_id(
        body["user_id"]
            .as_str()
            .ok_or_else(|| MatrixError::missing_param("Missing user_id"))?,
    )?;
    let content = match &body["content"] {
        v @ Value::Object(_) => v.clone(),
        _ => return Err(MatrixError::missing_param("content must be a JSON object")),
    };
    let event_type = match &body["type"] {
        Value::Null => "m.room.message",
        Value::String(s) => s.as_str(),
        _ => return Err(MatrixError::invalid_param("type must be a string")),
    };
    let state_key = match &body["state_key"] {
        Value::Null => None,
        Value::String(s) => Some(s.as_str()),
        _ => return Err(MatrixError::invalid_param("state_key must be a string")),
    };
    let notice = Notice {
        event_type,
        state_key,
        content,
        txn: txn_id.map(|t| (admin, t)),
    };
    let event_id = notices::send(&state.core, &sender, &user_id, notice).await?;
    Ok(Json(json!({ "event_id": event_id })))
}
