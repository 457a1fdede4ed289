//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs pushed by another server.

use axum::Router;
use ruma::api::federation::transactions::send_transaction_message;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use crate::transaction::{self, MAX_EDUS, MAX_PDUS};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(send)
}

async fn send(
    state: AppState,
    req: Ruma<send_transaction_message::v1::Request>,
) -> ApiResult<send_transaction_message::v1::Response> {
    let fed = crate::of(&state)?;
    let origin = req
        .origin
        .clone()
        .ok_or_else(|| MatrixError::unauthorized("Not signed"))?;
    if req.body.origin != origin {
        return Err(MatrixError::forbidden(format!(
            "The transaction claims to be from {}, but {origin} signed it",
            req.body.origin
        )));
    }
    if req.pdus.len() > MAX_PDUS || req.edus.len() > MAX_EDUS {
        return Err(MatrixError::bad_json(format!(
            "A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let results = transaction::process(fed, &origin, req.transaction_id.as_str(), &req.pdus, &req.edus).await?;
    Ok(send_transaction_message::v1::Response::new(results))
}
