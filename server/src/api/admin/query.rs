//! Query strings of the admin API, read by hand so that a bad value is a Matrix error
//! (`M_INVALID_PARAM`) rather than the framework's plain-text rejection.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};

use crate::{error::MatrixError, state::AppState};

pub struct Params(pub HashMap<String, String>);

impl FromRequestParts<AppState> for Params {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| MatrixError::invalid_param(e.body_text()))?;
        Ok(Params(map))
    }
}

impl Params {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, MatrixError> {
        self.str(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| MatrixError::invalid_param(format!("Query parameter {name} must be an integer")))
            })
            .transpose()
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, MatrixError> {
        match self.str(name) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(MatrixError::invalid_param(format!(
                "Query parameter {name} must be true or false"
            ))),
        }
    }
}

/// A JSON body that may be absent (then `T::default()`).
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, MatrixError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| MatrixError::bad_json(e.to_string()))
}
