//! Who sent a request: the X-Matrix `Authorization` header checked against the origin's keys
//! (fetched when not known) before any handler runs.

use futures::future::BoxFuture;
use ruma::{api::federation::authentication::XMatrix, signatures::PublicKeyMap, OwnedServerName};
use weft_http::{error::MatrixError, state::ServerAuth};

use crate::Federation;

impl ServerAuth for Federation {
    fn verify<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<OwnedServerName, MatrixError>> {
        Box::pin(async move {
            let refuse = |why: String| {
                tracing::info!(method = %parts.method, uri = %parts.uri, "refused a server request: {why}");
                MatrixError::unauthorized(why)
            };
            let header = XMatrix::extract_from_http_headers(&parts.headers)
                .map_err(|e| refuse(format!("No valid X-Matrix authorization: {e}")))?;
            let core = self.client.core();
            if header.destination.as_deref().is_some_and(|d| d != core.server_name) {
                return Err(refuse(format!(
                    "The request was signed for {}, not this server",
                    header.destination.as_deref().map(|d| d.as_str()).unwrap_or_default()
                )));
            }
            let key_id = header.key.to_string();
            let keys = self
                .keys
                .keys_valid_at(&header.origin, std::slice::from_ref(&key_id), weft_core::util::now_ms())
                .await;
            if keys.is_empty() {
                return Err(refuse(format!("No valid key {key_id} of {} is known", header.origin)));
            }
            let public_keys: PublicKeyMap = [(header.origin.to_string(), keys)].into();
            let mut request = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone());
            if let Some(headers) = request.headers_mut() {
                *headers = parts.headers.clone();
            }
            let request = request
                .body(body)
                .map_err(|e| refuse(format!("Malformed request: {e}")))?;
            header
                .verify_http_request(&request, &core.server_name, &public_keys)
                .map_err(|e| refuse(format!("Bad X-Matrix signature from {}: {e}", header.origin)))?;
            // A server that reaches this one is up: what is queued for it goes now, not at the
            // end of its backoff.
            if let Err(e) = weft_core::outbox::wake_destination(core, header.origin.as_str()).await {
                tracing::warn!(origin = %header.origin, error = %e, "cannot clear the destination's backoff");
            }
            Ok(header.origin)
        })
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
