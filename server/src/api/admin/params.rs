//! Query parameters of the admin API as Synapse reads them: `from`/`limit` offsets, `dir`,
//! flags spelt `true`/`false`, user IDs in paths.

use std::collections::HashMap;

use ruma::OwnedUserId;
use weft_core::admin::SqlPage;

use crate::error::{ApiResult, MatrixError};

pub type Params = HashMap<String, String>;

/// `from` (default 0), `limit` (default 100) and `dir` (`f` or `b`, default as given).
pub fn page(q: &Params, backwards_by_default: bool) -> ApiResult<SqlPage> {
    let number = |name: &str, default: i64| -> ApiResult<i64> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                MatrixError::invalid_param(format!("Query parameter {name} must be a non-negative integer"))
            }),
        }
    };
    let backwards = match q.get("dir").map(String::as_str) {
        None => backwards_by_default,
        Some("f") => false,
        Some("b") => true,
        Some(_) => return Err(MatrixError::invalid_param("Unknown direction: dir must be f or b")),
    };
    Ok(SqlPage {
        from: number("from", 0)?,
        limit: number("limit", 100)?,
        backwards,
    })
}

/// A flag parameter (`true`/`false`), `None` when absent.
pub fn flag(q: &Params, name: &str) -> ApiResult<Option<bool>> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "Query parameter {name} must be true or false"
        ))),
    }
}

/// A user ID from a path.
pub fn user_id(raw: &str) -> ApiResult<OwnedUserId> {
    OwnedUserId::try_from(raw).map_err(|_| MatrixError::invalid_param(format!("Invalid user ID {raw}")))
}

/// A JSON object body (an empty body is `{}`).
pub fn body(bytes: &[u8]) -> ApiResult<serde_json::Value> {
    if bytes.is_empty() {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_slice(bytes) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(MatrixError::bad_json("Body must be a JSON object")),
        Err(_) => Err(MatrixError::not_json("Content not JSON")),
    }
}
