//! Other servers' users' device lists, kept here so that `/keys/query` for them needs no
//! request and so that local clients learn when they change (`device_list_changes`, which sync
//! and `/keys/changes` read, takes their changes too).
//!
//! A user's list is first stored whole from their server's `/user/devices` (`replace`), then
//! kept current by their server's `m.device_list_update` EDUs (`apply_update`), each carrying a
//! stream ID and the previous one (`prev_id`): an update whose `prev_id` is not the last one
//! applied means one was missed, so the list is marked stale and fetched whole again (as after
//! downtime). A stale list is never answered from; the user's server is asked instead.
//! Only users who share a room with a local user are kept (others' updates are ignored).

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::AnyConnection;

use super::device_lists;
use crate::{util::now_ms, Core, Result};

/// One device as its server describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteDevice {
    pub device_id: String,
    pub display_name: Option<String>,
    pub keys: Value,
}

/// A user's whole device list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceList {
    pub stream_id: i64,
    pub devices: Vec<RemoteDevice>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

/// One `m.device_list_update`.
#[derive(Clone, Debug)]
pub struct Update {
    pub user_id: String,
    pub device_id: String,
    pub stream_id: i64,
    pub prev_id: Vec<i64>,
    pub deleted: bool,
    pub display_name: Option<String>,
    pub keys: Option<Value>,
}

/// What became of an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied on top of the stored list.
    Applied,
    /// Already reflected (its stream ID is not past the stored one), or about a user no local
    /// user shares a room with.
    Ignored,
    /// The list is missing or behind: fetch it whole (`replace`).
    Resync,
}

/// Whether some local user shares a joined room with `user_id`.
pub async fn shares_room_with_local(core: &Core, conn: &mut AnyConnection, user_id: &str) -> Result<bool> {
    let suffix = format!(":{}", core.server_name);
    Ok(device_lists::sharing_users(conn, user_id)
        .await?
        .iter()
        .any(|u| u.ends_with(&suffix)))
}

async fn tracked(conn: &mut AnyConnection, user_id: &str) -> Result<Option<(i64, bool)>> {
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|(s, stale)| (s, stale != 0)))
}

/// Applies an update from the user's own server (the caller checked the origin).
pub async fn apply_update(core: &Core, update: &Update) -> Result<Outcome> {
    let mut tx = core.db.write().await?;
    let Some((stream_id, stale)) = tracked(&mut tx, &update.user_id).await? else {
        drop(tx);
        let mut conn = core.db.conn().await?;
        return Ok(if shares_room_with_local(core, &mut conn, &update.user_id).await? {
            Outcome::Resync
        } else {
            Outcome::Ignored
        });
    };
    if update.stream_id <= stream_id && !stale {
        return Ok(Outcome::Ignored);
    }
    // The spec's rule: every prev_id must be the last update applied; none means "resync".
    if stale || update.prev_id.is_empty() || update.prev_id.iter().any(|p| *p != stream_id) {
        sqlx::query("UPDATE remote_device_lists SET stale = 1 WHERE user_id = $1")
            .bind(&update.user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Outcome::Resync);
    }
    match (&update.keys, update.deleted) {
        (Some(keys), false) => {
            sqlx::query(
                "INSERT INTO remote_devices (user_id, device_id, display_name, keys_json) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, keys_json = excluded.keys_json",
            )
            .bind(&update.user_id)
            .bind(&update.device_id)
            .bind(&update.display_name)
            .bind(keys.to_string())
            .execute(&mut *tx)
            .await?;
        }
        _ => {
            // Deleted, or a device without keys: nothing a client could encrypt to.
            sqlx::query("DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2")
                .bind(&update.user_id)
                .bind(&update.device_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    sqlx::query("UPDATE remote_device_lists SET stream_id = $2, updated_ts = $3 WHERE user_id = $1")
        .bind(&update.user_id)
        .bind(update.stream_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    device_lists::record_changes(&mut tx, &[update.user_id.as_str()]).await?;
    tx.commit().await?;
    device_lists::notify(core, &update.user_id).await?;
    Ok(Outcome::Applied)
}

/// Marks a kept list as behind (a resync failed): queries ask the user's server until a
/// resync succeeds.
pub async fn mark_stale(core: &Core, user_id: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    sqlx::query("UPDATE remote_device_lists SET stale = 1 WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a user's whole list as their server answered it (`/user/devices`), replacing what
/// was kept; local clients are told when it differs. Returns whether it did.
pub async fn replace(core: &Core, user_id: &str, list: &DeviceList) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let before = read(&mut tx, user_id).await?;
    let changed = before.as_ref().is_none_or(|(old, _)| !same_content(old, list));
    sqlx::query("DELETE FROM remote_devices WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    for device in &list.devices {
        sqlx::query(
            "INSERT INTO remote_devices (user_id, device_id, display_name, keys_json) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, keys_json = excluded.keys_json",
        )
        .bind(user_id)
        .bind(&device.device_id)
        .bind(&device.display_name)
        .bind(device.keys.to_string())
        .execute(&mut *tx)
        .await?;
    }
    store_signing_keys(
        &mut tx,
        user_id,
        list.master_key.as_ref(),
        list.self_signing_key.as_ref(),
    )
    .await?;
    sqlx::query(
        "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, 0, $3)
         ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0, updated_ts = excluded.updated_ts",
    )
    .bind(user_id)
    .bind(list.stream_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if changed {
        device_lists::record_changes(&mut tx, &[user_id]).await?;
    }
    tx.commit().await?;
    if changed {
        device_lists::notify(core, user_id).await?;
    }
    Ok(changed)
}

fn same_content(a: &DeviceList, b: &DeviceList) -> bool {
    let mut a_devices = a.devices.clone();
    let mut b_devices = b.devices.clone();
    a_devices.sort_by(|x, y| x.device_id.cmp(&y.device_id));
    b_devices.sort_by(|x, y| x.device_id.cmp(&y.device_id));
    a_devices == b_devices && a.master_key == b.master_key && a.self_signing_key == b.self_signing_key
}

async fn store_signing_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    master: Option<&Value>,
    self_signing: Option<&Value>,
) -> Result<()> {
    for (key_type, key) in [("master", master), ("self_signing", self_signing)] {
        let Some(key) = key else { continue };
        sqlx::query(
            "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(key_type)
        .bind(key.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Applies an `m.signing_key_update` from the user's own server to a kept list; returns
/// whether the user is kept (otherwise the keys are fetched with the list when needed).
pub async fn apply_signing_keys(
    core: &Core,
    user_id: &str,
    master: Option<&Value>,
    self_signing: Option<&Value>,
) -> Result<bool> {
    let mut tx = core.db.write().await?;
    if tracked(&mut tx, user_id).await?.is_none() {
        return Ok(false);
    }
    store_signing_keys(&mut tx, user_id, master, self_signing).await?;
    device_lists::record_changes(&mut tx, &[user_id]).await?;
    tx.commit().await?;
    device_lists::notify(core, user_id).await?;
    Ok(true)
}

async fn read(conn: &mut AnyConnection, user_id: &str) -> Result<Option<(DeviceList, bool)>> {
    let Some((stream_id, stale)) = tracked(&mut *conn, user_id).await? else {
        return Ok(None);
    };
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT device_id, display_name, keys_json FROM remote_devices WHERE user_id = $1 ORDER BY device_id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    let devices = rows
        .into_iter()
        .filter_map(|(device_id, display_name, keys)| {
            Some(RemoteDevice {
                device_id,
                display_name,
                keys: serde_json::from_str(&keys).ok()?,
            })
        })
        .collect();
    let signing: BTreeMap<String, Value> = sqlx::query_as::<_, (String, String)>(
        "SELECT key_type, key_json FROM remote_cross_signing_keys WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter_map(|(t, k)| Some((t, serde_json::from_str(&k).ok()?)))
    .collect();
    Ok(Some((
        DeviceList {
            stream_id,
            devices,
            master_key: signing.get("master").cloned(),
            self_signing_key: signing.get("self_signing").cloned(),
        },
        stale,
    )))
}

/// The kept list of `user_id`, unless none is kept or it is stale.
pub async fn current(core: &Core, user_id: &str) -> Result<Option<DeviceList>> {
    let mut conn = core.db.conn().await?;
    Ok(read(&mut conn, user_id)
        .await?
        .and_then(|(list, stale)| (!stale).then_some(list)))
}

/// Whether the user's list is kept and current.
pub async fn is_current(core: &Core, user_id: &str) -> Result<bool> {
    let mut conn = core.db.conn().await?;
    Ok(tracked(&mut conn, user_id).await?.is_some_and(|(_, stale)| !stale))
}

/// The kept master key of another server's user: `(public key, key)`, which a local user's
/// user-signing key may sign (`cross_signing::upload_signatures`).
pub async fn master_key(conn: &mut AnyConnection, user_id: &str) -> Result<Option<(String, Value)>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT key_json FROM remote_cross_signing_keys WHERE user_id = $1 AND key_type = 'master'")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .and_then(|(json,)| serde_json::from_str::<Value>(&json).ok())
        .and_then(|key| Some((super::single_ed25519_key(&key)?.1, key))))
}

/// Adds to other servers' users' master keys in a query answer the signatures `requester`
/// made on them (with their user-signing key), which only this server keeps.
pub async fn add_own_signatures(core: &Core, requester: &str, master_keys: &mut BTreeMap<String, Value>) -> Result<()> {
    let mut conn = core.db.conn().await?;
    for (user_id, key) in master_keys.iter_mut() {
        let Some((_, public)) = super::single_ed25519_key(key) else {
            continue;
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT signer_key, signature FROM e2e_signatures WHERE target_user = $1 AND target_key = $2 AND signer_user = $3",
        )
        .bind(user_id.as_str())
        .bind(&public)
        .bind(requester)
        .fetch_all(&mut *conn)
        .await?;
        for (signer_key, signature) in rows {
            super::merge_signature(key, requester, &signer_key, &signature);
        }
    }
    Ok(())
}
