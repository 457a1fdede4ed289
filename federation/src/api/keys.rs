//! The key server: this server's signing keys (`/_matrix/key/v2/server`), and the notary that
//! vouches for other servers' keys (`/_matrix/key/v2/query`).

use std::{collections::BTreeSet, time::Duration};

use axum::Router;
use ruma::{
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, ServerSigningKeys,
    },
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    serde::Raw,
    ServerName,
};
use serde_json::json;
use weft_core::storage::server_keys;
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use crate::Federation;

/// How long other servers may keep using the keys they fetched before asking again; Synapse's
/// default.
const KEY_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(server_keys).ruma(query_one).ruma(query_batch)
}

/// # `GET /_matrix/key/v2/server`
///
/// The server's current verify key and its former ones (after `weft key rotate`), signed with
/// the current key, valid for `KEY_VALIDITY`.
async fn server_keys(
    state: AppState,
    _: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(to_raw(&own_answer(&state.core)?)?))
}

/// # `GET /_matrix/key/v2/query/{serverName}`
///
/// The notary: another server's keys, as that server signed them, countersigned by this one.
async fn query_one(
    state: AppState,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<get_remote_server_keys::v2::Response> {
    let federation = crate::of(&state)?;
    let wanted = i64::from(req.minimum_valid_until_ts.get());
    let answers = notarise(&state, federation, &req.server_name, wanted).await?;
    Ok(get_remote_server_keys::v2::Response::new(answers))
}

/// # `POST /_matrix/key/v2/query`
async fn query_batch(
    state: AppState,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<get_remote_server_keys_batch::v2::Response> {
    let federation = crate::of(&state)?;
    // Asking about more servers at once than a room's worth is not a notary's job.
    const MAX_SERVERS: usize = 100;
    if req.server_keys.len() > MAX_SERVERS {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_SERVERS} servers per query"
        )));
    }
    let now = weft_core::util::now_ms();
    let mut answers = Vec::new();
    for (server, key_criteria) in &req.server_keys {
        let wanted = key_criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts.map(|ts| i64::from(ts.get())))
            .max()
            .unwrap_or(now);
        answers.extend(notarise(&state, federation, server, wanted).await?);
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(answers))
}

/// `server`'s key answers valid until at least `wanted` (fetched again when what is stored is
/// not), each countersigned by this server; this server's own when asked about itself.
async fn notarise(
    state: &AppState,
    federation: &Federation,
    server: &ServerName,
    wanted: i64,
) -> ApiResult<Vec<Raw<ServerSigningKeys>>> {
    let core = &state.core;
    if server == core.server_name {
        return Ok(vec![to_raw(&own_answer(core)?)?]);
    }
    let mut stored = server_keys::of_server(&state.db, server.as_str()).await?;
    if !stored
        .iter()
        .any(|k| k.expired_ts.is_none() && k.valid_until_ts >= wanted)
    {
        if let Err(e) = federation.keys.fetch_direct(server).await {
            tracing::info!(%server, error = %e, "notary: cannot fetch the server's keys");
        }
        stored = server_keys::of_server(&state.db, server.as_str()).await?;
    }
    let answers: BTreeSet<&str> = stored.iter().map(|k| k.key_json.as_str()).collect();
    answers
        .into_iter()
        .filter_map(|json| serde_json::from_str::<CanonicalJsonObject>(json).ok())
        .map(|mut answer| {
            ruma::signatures::sign_json(core.server_name.as_str(), &core.key.keypair, &mut answer)
                .map_err(|e| MatrixError::unknown(format!("countersigning keys: {e}")))?;
            to_raw(&answer)
        })
        .collect()
}

/// This server's key answer, signed.
fn own_answer(core: &weft_core::Core) -> ApiResult<CanonicalJsonObject> {
    let valid_until = weft_core::util::now_ms() + KEY_VALIDITY.as_millis() as i64;
    let old_verify_keys: serde_json::Map<String, serde_json::Value> = core
        .key
        .old_keys
        .iter()
        .map(|old| {
            (
                old.key_id.clone(),
                json!({ "key": old.public_key, "expired_ts": old.expired_ts }),
            )
        })
        .collect();
    let keys = json!({
        "server_name": core.server_name,
        "verify_keys": { &core.key.key_id: { "key": core.key.public_key_base64() } },
        "old_verify_keys": old_verify_keys,
        "valid_until_ts": valid_until,
    });
    let CanonicalJsonValue::Object(mut object) = ruma::canonical_json::to_canonical_value(&keys)
        .map_err(|e| MatrixError::unknown(format!("server keys: {e}")))?
    else {
        return Err(MatrixError::unknown("server keys are not an object"));
    };
    ruma::signatures::sign_json(core.server_name.as_str(), &core.key.keypair, &mut object)
        .map_err(|e| MatrixError::unknown(format!("signing the server keys: {e}")))?;
    Ok(object)
}

fn to_raw<T>(object: &CanonicalJsonObject) -> ApiResult<Raw<T>> {
    let text = serde_json::to_string(object).map_err(|e| MatrixError::unknown(e.to_string()))?;
    Raw::from_json_string(text).map_err(|e| MatrixError::unknown(e.to_string()))
}
