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
            // Missing or incomplete authorization is 401; an origin that is not a server name
            // (a port that is not a number, say) is a malformed request, 400, as Synapse
            // answers.
            let header = XMatrix::extract_from_http_headers(&parts.headers).map_err(|e| {
                let error = refuse(format!("No valid X-Matrix authorization: {e}"));
                if names_no_server(&parts.headers) {
                    error.with_status(http::StatusCode::BAD_REQUEST)
                } else {
                    error
                }
            })?;
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
            if let Err(e) = header.verify_http_request(&request, &core.server_name, &public_keys) {
                // A body that is JSON but not canonical JSON (a float, an integer out of
                // range) was still signed by its sender: it is verified as the sender
                // serialised it, and the handler then refuses what it must (such an event, say).
                let lenient = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .filter(|_| serde_json::from_slice::<ruma::CanonicalJsonValue>(body).is_err())
                    .is_some_and(|content| verify_lenient(&header, parts, &core.server_name, &content, &public_keys));
                if !lenient {
                    return Err(refuse(format!("Bad X-Matrix signature from {}: {e}", header.origin)));
                }
            }
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

/// Checks the X-Matrix signature of a request whose JSON body is not canonical JSON, over the
/// canonical form of what was sent.
fn verify_lenient(
    header: &XMatrix,
    parts: &http::request::Parts,
    destination: &ruma::ServerName,
    content: &serde_json::Value,
    public_keys: &PublicKeyMap,
) -> bool {
    let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
    let signed = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": uri,
        "origin": header.origin,
        "destination": destination,
        "content": content,
    });
    let mut canonical = String::new();
    write_sorted(&signed, &mut canonical);
    let key_id = header.key.to_string();
    let Some(public_key) = public_keys
        .get(header.origin.as_str())
        .and_then(|keys| keys.get(&key_id))
    else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        header.sig.as_bytes(),
        canonical.as_bytes(),
    )
    .is_ok()
}

/// `value` as compact JSON with every object's keys in order, whatever order `serde_json`
/// keeps them in.
fn write_sorted(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether an X-Matrix header's `origin` is there but is not a valid server name.
fn names_no_server(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("X-Matrix "))
    else {
        return false;
    };
    value
        .split(',')
        .filter_map(|param| param.trim().strip_prefix("origin="))
        .any(|origin| ruma::ServerName::parse(origin.trim_matches('"')).is_err())
}
