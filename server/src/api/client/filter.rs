//! `/user/{userId}/filter`.

use ruma::api::client::filter::{create_filter, get_filter, FilterDefinition};
use weft_core::storage::filters;

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

pub async fn create(state: AppState, req: Ruma<create_filter::v3::Request>) -> ApiResult<create_filter::v3::Response> {
    let user = req.sender()?;
    if user.user_id != req.user_id {
        return Err(MatrixError::forbidden("Cannot create filters for other users"));
    }
    // Store what the client sent (ruma already validated its shape), so unknown fields survive.
    let content = match &req.json_body {
        Some(json) => json.to_string(),
        None => serde_json::to_string(&req.filter).map_err(|e| MatrixError::bad_json(e.to_string()))?,
    };
    let mut tx = state.db.write().await?;
    let id = filters::create(&mut tx, user.user_id.as_str(), &content).await?;
    tx.commit().await?;
    Ok(create_filter::v3::Response::new(id.to_string()))
}

pub async fn get(state: AppState, req: Ruma<get_filter::v3::Request>) -> ApiResult<get_filter::v3::Response> {
    let user = req.sender()?;
    if user.user_id != req.user_id {
        return Err(MatrixError::forbidden("Cannot read other users' filters"));
    }
    let id: i64 = req
        .filter_id
        .parse()
        .map_err(|_| MatrixError::not_found("Filter not found"))?;
    let content = filters::get(&state.db, user.user_id.as_str(), id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Filter not found"))?;
    let filter: FilterDefinition = serde_json::from_str(&content).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(get_filter::v3::Response::new(filter))
}
