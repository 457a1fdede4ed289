//! The key server: this server's signing keys (`/_matrix/key/v2/server`), and the notary that
//! vouches for other servers' keys (`/_matrix/key/v2/query`).

use std::{collections::BTreeSet, time::Duration};

use axum::{
    extract::{Path, Query, State},
    routing::get,
    Json, Router,
};
use ruma::{
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, ServerSigningKeys,
    },
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    serde::Raw,
    OwnedServerName, ServerName,
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
    router
        .ruma(server_keys)
        .ruma(query_one)
        .ruma(query_batch)
        // The deprecated forms with a key ID in the path, which older servers and sytest still
        // use; the answer is the same (all keys), as the key ID was only ever a hint.
        .route("/_matrix/key/v2/server/{key_id}", get(legacy_server_keys))
        .route("/_matrix/key/v2/query/{server_name}/{key_id}", get(legacy_query_one))
}

async fn legacy_server_keys(State(state): State<AppState>) -> ApiResult<Json<CanonicalJsonObject>> {
    Ok(Json(own_answer(&state.core)?))
}

async fn legacy_query_one(
    State(state): State<AppState>,
    Path((server_name, key_id)): Path<(OwnedServerName, String)>,
    Query(query): Query<LegacyQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let federation = crate::of(&state)?;
    let wanted = query.minimum_valid_until_ts.unwrap_or_else(weft_core::util::now_ms);
    let answers = notarise(&state, federation, &server_name, &[key_id], wanted).await?;
    Ok(Json(json!({ "server_keys": answers })))
}

#[derive(serde::Deserialize)]
struct LegacyQuery {
    minimum_valid_until_ts: Option<i64>,
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
    let answers = notarise(&state, federation, &req.server_name, &[], wanted).await?;
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
        let key_ids: Vec<String> = key_criteria.keys().map(|id| id.to_string()).collect();
        answers.extend(notarise(&state, federation, server, &key_ids, wanted).await?);
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(answers))
}

/// `server`'s key answers valid until at least `wanted` (fetched again when what is stored is
/// not), each countersigned by this server; this server's own when asked about itself. With
/// `key_ids`, only the answers holding one of them: an answer the server gave earlier stays
/// the answer for its keys even after the server stopped listing them, so a later answer
/// cannot make the notary forget a key it once vouched for.
async fn notarise(
    state: &AppState,
    federation: &Federation,
    server: &ServerName,
    key_ids: &[String],
    wanted: i64,
) -> ApiResult<Vec<Raw<ServerSigningKeys>>> {
    let core = &state.core;
    if server == core.server_name {
        return Ok(vec![to_raw(&own_answer(core)?)?]);
    }
    let wanted_key = |k: &server_keys::StoredKey| key_ids.is_empty() || key_ids.contains(&k.key_id);
    let fresh_enough = |stored: &[server_keys::StoredKey]| {
        let usable =
            |k: &&server_keys::StoredKey| wanted_key(k) && k.expired_ts.is_none() && k.valid_until_ts >= wanted;
        if key_ids.is_empty() {
            stored.iter().any(|k| usable(&k))
        } else {
            key_ids
                .iter()
                .all(|id| stored.iter().filter(|k| &k.key_id == id).any(|k| usable(&k)))
        }
    };
    let mut stored = server_keys::of_server(&state.db, server.as_str()).await?;
    if !fresh_enough(&stored) {
        if let Err(e) = federation.keys.fetch_direct(server).await {
            tracing::info!(%server, error = %e, "notary: cannot fetch the server's keys");
        }
        stored = server_keys::of_server(&state.db, server.as_str()).await?;
    }
    let answers: BTreeSet<&str> = stored
        .iter()
        .filter(|k| wanted_key(k))
        .map(|k| k.key_json.as_str())
        .collect();
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
