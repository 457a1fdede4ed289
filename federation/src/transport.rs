//! The outbox's transactions over the federation client (`sender::Transport`).

use futures::future::BoxFuture;
use ruma::{
    api::federation::transactions::send_transaction_message, MilliSecondsSinceUnixEpoch, OwnedTransactionId, ServerName,
};

use crate::{
    client::{Client, FederationError},
    sender::{SendError, Transport},
};

impl Transport for Client {
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: serde_json::Value,
    ) -> BoxFuture<'_, Result<(), SendError>> {
        let destination = destination.to_owned();
        let txn_id = txn_id.to_owned();
        Box::pin(async move {
            let mut request = send_transaction_message::v1::Request::new(
                OwnedTransactionId::from(txn_id.as_str()),
                self.core().server_name.clone(),
                MilliSecondsSinceUnixEpoch::now(),
            );
            request.pdus = serde_json::from_value(body["pdus"].clone())
                .map_err(|e| SendError::permanent(format!("the queued PDUs do not parse: {e}")))?;
            request.edus = serde_json::from_value(body["edus"].clone())
                .map_err(|e| SendError::permanent(format!("the queued EDUs do not parse: {e}")))?;
            let answer = match self.send(&destination, request).await {
                Ok(answer) => answer,
                // A success status whose body is not the spec's shape (some servers answer
                // `{}`) still acknowledges the transaction; sending it again would not help.
                Err(FederationError::BadResponse { message, .. }) => {
                    tracing::debug!(%destination, %message, "the destination acknowledged a transaction with an unexpected body");
                    return Ok(());
                }
                Err(e) => return Err(classify(e)),
            };
            // A PDU the destination refused is its verdict, not a delivery failure: sending
            // it again would be refused again.
            for (event_id, result) in answer.pdus {
                if let Err(error) = result {
                    tracing::info!(%destination, %event_id, %error, "the destination refused a PDU");
                }
            }
            Ok(())
        })
    }
}

/// Only an answer saying the transaction itself is malformed is final; anything else
/// (unreachable, overloaded, keys not yet fetched, a server starting up) may pass later.
fn classify(e: FederationError) -> SendError {
    match (e.status(), e.errcode()) {
        (Some(400), Some("M_BAD_JSON" | "M_NOT_JSON" | "M_TOO_LARGE")) | (Some(413), _) => {
            SendError::permanent(e.to_string())
        }
        _ => SendError::retryable(e.to_string()),
    }
}
