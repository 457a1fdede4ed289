//! Device keys, one-time keys and fallback keys: upload, query, claim, and the counts sync
//! reports so that clients top up their one-time keys.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{device_lists, merge_signature, signable};
use crate::{Core, Error, Result};

/// What one `/keys/upload` carries, already split into JSON objects.
#[derive(Clone, Debug, Default)]
pub struct Upload {
    pub device_keys: Option<Value>,
    /// `("<algorithm>:<id>", key)`.
    pub one_time_keys: Vec<(String, Value)>,
    pub fallback_keys: Vec<(String, Value)>,
}

/// Checks that device keys belong to this user and device. Their self-signature is not
/// verified (as with Synapse): the clients that query them do, and one a server refuses
/// leaves the device unable to publish keys at all.
pub fn validate_device_keys(keys: &Value, user_id: &str, device_id: &str) -> Result<()> {
    if keys["user_id"].as_str() != Some(user_id) || keys["device_id"].as_str() != Some(device_id) {
        return Err(Error::InvalidParam(
            "device_keys must be for the uploading user and device".into(),
        ));
    }
    Ok(())
}

fn algorithm_of(key_id: &str) -> Result<&str> {
    match key_id.split_once(':') {
        Some((alg, id)) if !alg.is_empty() && !id.is_empty() => Ok(alg),
        _ => Err(Error::InvalidParam(format!(
            "key ID {key_id:?} is not <algorithm>:<id>"
        ))),
    }
}

/// Stores an upload for the caller's device and returns its one-time key counts.
pub async fn upload(core: &Core, user_id: &str, device_id: &str, upload: &Upload) -> Result<BTreeMap<String, i64>> {
    if let Some(keys) = &upload.device_keys {
        validate_device_keys(keys, user_id, device_id)?;
    }
    for (key_id, _) in upload.one_time_keys.iter().chain(&upload.fallback_keys) {
        algorithm_of(key_id)?;
    }
    let mut tx = core.db.write().await?;
    let changed = match &upload.device_keys {
        Some(keys) => store_device_keys(&mut tx, user_id, device_id, keys).await?,
        None => false,
    };
    store_one_time_keys(&mut tx, user_id, device_id, &upload.one_time_keys).await?;
    store_fallback_keys(&mut tx, user_id, device_id, &upload.fallback_keys).await?;
    if changed {
        device_lists::record_changes(&mut tx, &[user_id]).await?;
    }
    tx.commit().await?;
    if changed {
        device_lists::notify(core, user_id).await?;
    }
    Ok(device_key_state(core, user_id, device_id).await?.one_time_key_counts)
}

/// Stores device keys; true when they differ from what was stored.
pub async fn store_device_keys(conn: &mut AnyConnection, user_id: &str, device_id: &str, keys: &Value) -> Result<bool> {
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *conn)
            .await?;
    let old: Option<Value> = existing.and_then(|r| serde_json::from_str(&r.0).ok());
    if old.as_ref() == Some(keys) {
        return Ok(false);
    }
    if old.as_ref().is_some_and(|o| o["keys"] != keys["keys"]) {
        // New identity keys: signatures others made over the old ones no longer hold.
        sqlx::query("DELETE FROM e2e_signatures WHERE target_user = $1 AND target_key = $2")
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(keys.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Adds one-time keys; re-uploading a key ID with other content is refused (as Synapse does),
/// since a client that does so has lost track of which keys the server holds.
pub async fn store_one_time_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    keys: &[(String, Value)],
) -> Result<()> {
    for (key_id, key) in keys {
        let algorithm = algorithm_of(key_id)?;
        let existing: Option<(String,)> = sqlx::query_as(
            "SELECT key_json FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((old,)) = existing {
            if serde_json::from_str::<Value>(&old).ok().as_ref() == Some(key) {
                continue;
            }
            return Err(Error::InvalidParam(format!(
                "one-time key {key_id} already exists with different content"
            )));
        }
        sqlx::query("INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES ($1, $2, $3, $4, $5)")
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .bind(key.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Replaces the fallback key per algorithm; the same key uploaded again keeps its `used` flag.
pub async fn store_fallback_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    keys: &[(String, Value)],
) -> Result<()> {
    for (key_id, key) in keys {
        let algorithm = algorithm_of(key_id)?;
        sqlx::query(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
               used = CASE WHEN e2e_fallback_keys.key_id = excluded.key_id AND e2e_fallback_keys.key_json = excluded.key_json
                           THEN e2e_fallback_keys.used ELSE 0 END,
               key_id = excluded.key_id, key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(key.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What a sync reports of a device's keys: unclaimed one-time keys per algorithm
/// (`signed_curve25519` always present, 0 when none, as clients read a missing count as "no need
/// to upload") and the algorithms whose fallback key has not been handed out yet.
pub struct DeviceKeyState {
    pub one_time_key_counts: BTreeMap<String, i64>,
    pub unused_fallback_key_types: Vec<String>,
}

/// Reads both in one statement.
pub async fn device_key_state(core: &Core, user_id: &str, device_id: &str) -> Result<DeviceKeyState> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT algorithm, COUNT(*), CAST(0 AS BIGINT) FROM e2e_one_time_keys
         WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
         UNION ALL
         SELECT algorithm, CAST(0 AS BIGINT), CAST(1 AS BIGINT) FROM e2e_fallback_keys
         WHERE user_id = $1 AND device_id = $2 AND used = 0",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(core.db.pool())
    .await?;
    let mut state = DeviceKeyState {
        one_time_key_counts: BTreeMap::from([("signed_curve25519".to_owned(), 0)]),
        unused_fallback_key_types: Vec::new(),
    };
    for (algorithm, count, is_fallback) in rows {
        if is_fallback == 1 {
            state.unused_fallback_key_types.push(algorithm);
        } else {
            state.one_time_key_counts.insert(algorithm, count);
        }
    }
    state.unused_fallback_key_types.sort();
    Ok(state)
}

pub(crate) fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

/// The answer to `/keys/query`, keyed by user ID.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    pub master_keys: BTreeMap<String, Value>,
    pub self_signing_keys: BTreeMap<String, Value>,
    pub user_signing_keys: BTreeMap<String, Value>,
    pub failures: BTreeMap<String, Value>,
}

/// Keys of the requested local users (all their devices when the list is empty). Signatures
/// others uploaded are merged in; a master key shows only its owner's and the requester's
/// signatures, and the user-signing key only to its owner, as the spec asks. Other servers'
/// users are left out: the caller asks their servers (`weft_federation::e2ee`) or the cache
/// (`e2ee::remote`).
pub async fn query(core: &Core, requester: &str, requested: &BTreeMap<String, Vec<String>>) -> Result<QueryResult> {
    let mut conn = core.db.conn().await?;
    let mut result = QueryResult::default();
    for (user_id, wanted) in requested {
        if server_of(user_id) != core.server_name.as_str() {
            continue;
        }
        local_user_keys(&mut conn, requester, user_id, wanted, &mut result).await?;
    }
    Ok(result)
}

/// One local user's part of a `query` answer, added to `result`. `requester` is empty for
/// another server asking (it sees no user-signing key and only the owner's signatures on the
/// master key).
pub async fn local_user_keys(
    conn: &mut AnyConnection,
    requester: &str,
    user_id: &str,
    wanted: &[String],
    result: &mut QueryResult,
) -> Result<()> {
    let signatures = uploaded_signatures(&mut *conn, user_id).await?;
    let devices = device_keys_of(&mut *conn, user_id).await?;
    let mut out = BTreeMap::new();
    for (device_id, mut keys, display_name) in devices {
        if !wanted.is_empty() && !wanted.contains(&device_id) {
            continue;
        }
        for (signer, signer_key, sig) in signatures.get(&device_id).into_iter().flatten() {
            merge_signature(&mut keys, signer, signer_key, sig);
        }
        if !keys["unsigned"].is_object() {
            keys["unsigned"] = json!({});
        }
        if let Some(name) = display_name {
            keys["unsigned"]["device_display_name"] = json!(name);
        }
        out.insert(device_id, keys);
    }
    result.device_keys.insert(user_id.to_owned(), out);
    for (key_type, public_key, mut key) in super::cross_signing::keys_of(&mut *conn, user_id).await? {
        for (signer, signer_key, sig) in signatures.get(&public_key).into_iter().flatten() {
            if key_type != "master" || signer == user_id || signer == requester {
                merge_signature(&mut key, signer, signer_key, sig);
            }
        }
        match key_type.as_str() {
            "master" => result.master_keys.insert(user_id.to_owned(), key),
            "self_signing" => result.self_signing_keys.insert(user_id.to_owned(), key),
            "user_signing" if user_id == requester => result.user_signing_keys.insert(user_id.to_owned(), key),
            _ => None,
        };
    }
    Ok(())
}

/// `(device_id, keys, display name)` of every device of the user that still exists.
async fn device_keys_of(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<(String, Value, Option<String>)>> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k
         JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
         WHERE k.user_id = $1 ORDER BY k.device_id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, k, n)| Some((d, serde_json::from_str(&k).ok()?, n)))
        .collect())
}

/// Signatures uploaded for the user's keys: target key -> `(signer, signer key, signature)`.
async fn uploaded_signatures(
    conn: &mut AnyConnection,
    user_id: &str,
) -> Result<BTreeMap<String, Vec<(String, String, String)>>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT target_key, signer_user, signer_key, signature FROM e2e_signatures WHERE target_user = $1",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    let mut map: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for (target, signer, key, sig) in rows {
        map.entry(target).or_default().push((signer, key, sig));
    }
    Ok(map)
}

/// Claimed keys: user -> device -> key ID -> key.
pub type Claimed = BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>;

/// Hands out one one-time key per requested (user, device, algorithm), or the fallback key
/// (marked used) when none is left. No key is ever given out twice, also under concurrent
/// claims: see `take_one_time_key`. Only local users' keys: other servers' users are left out
/// (their servers are asked by `weft_federation::e2ee`).
pub async fn claim(core: &Core, requested: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Claimed> {
    let mut claimed = Claimed::new();
    let mut tx = core.db.write().await?;
    for (user_id, devices) in requested {
        if server_of(user_id) != core.server_name.as_str() {
            continue;
        }
        for (device_id, algorithm) in devices {
            let key = match take_one_time_key(&mut tx, user_id, device_id, algorithm).await? {
                Some(k) => Some(k),
                None => use_fallback_key(&mut tx, user_id, device_id, algorithm).await?,
            };
            if let Some((key_id, key)) = key {
                claimed
                    .entry(user_id.clone())
                    .or_default()
                    .entry(device_id.clone())
                    .or_default()
                    .insert(key_id, key);
            }
        }
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Deletes and returns one one-time key. The row is chosen and deleted in one statement; on
/// PostgreSQL a concurrent claim that picked the same row finds it gone after waiting for its
/// lock and deletes nothing, so we pick again while keys remain.
async fn take_one_time_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, Value)>> {
    loop {
        let row: Option<(String, String)> = sqlx::query_as(
            "DELETE FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id =
               (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                ORDER BY key_id LIMIT 1)
             RETURNING key_id, key_json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((key_id, json)) = row {
            return Ok(Some((key_id, serde_json::from_str(&json).unwrap_or_default())));
        }
        let (left,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_one(&mut *conn)
        .await?;
        if left == 0 {
            return Ok(None);
        }
    }
}

/// The fallback key, which stays in place and is marked used.
async fn use_fallback_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, Value)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
         RETURNING key_id, key_json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id, json)| (id, serde_json::from_str(&json).unwrap_or_default())))
}

/// Whether the user's device has published keys, and its ed25519 key.
pub async fn device_ed25519(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> Result<Option<(Value, String)>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(conn)
            .await?;
    let Some(keys) = row.and_then(|r| serde_json::from_str::<Value>(&r.0).ok()) else {
        return Ok(None);
    };
    let ed = keys["keys"][format!("ed25519:{device_id}")].as_str().map(str::to_owned);
    Ok(ed.map(|ed| (signable(&keys), ed)))
}
