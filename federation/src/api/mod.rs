//! Server-Server API endpoints, one module per area of their path.

pub mod backfill;
pub mod directory;
pub mod event;
pub mod invite;
pub mod keys;
pub mod media;
pub mod membership;
pub mod openid;
pub mod query;
pub mod rtc;
pub mod send;
pub mod space;
pub mod state;
#[cfg(test)]
mod tests;
pub mod user;
pub mod version;

use ruma::{api::OutgoingResponseExt, ServerName};
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
};

/// The server that signed a request. `Ruma` verifies the signature of every endpoint that
/// needs one before the handler runs, so a missing origin is a route mounted on the wrong
/// kind of endpoint; it is refused rather than trusted.
pub(crate) fn origin<T>(req: &Ruma<T>) -> ApiResult<&ServerName> {
    req.origin
        .as_deref()
        .ok_or_else(|| MatrixError::unauthorized("This endpoint needs a signed request from a server"))
}

/// A v2 answer as the deprecated v1 endpoints give it: `[200, answer]`.
pub(crate) fn v1_wrapped<T: ruma::api::OutgoingResponse>(response: T) -> ApiResult<axum::Json<serde_json::Value>> {
    let http = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| MatrixError::unknown(format!("serialising the answer: {e}")))?;
    let body: serde_json::Value =
        serde_json::from_slice(http.body()).map_err(|e| MatrixError::unknown(format!("the answer: {e}")))?;
    Ok(axum::Json(serde_json::json!([200, body])))
}

/// PDUs as ruma's responses carry them.
pub(crate) fn pdus(served: Vec<weft_core::rooms::for_servers::ServedPdu>) -> Vec<Box<serde_json::value::RawValue>> {
    served.into_iter().map(|p| p.pdu).collect()
}
