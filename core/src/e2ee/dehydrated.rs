//! Dehydrated devices (MSC3814): a device whose encrypted state the client parks on the server
//! so that it keeps receiving to-device messages (room keys) while the user has no client
//! running. One per user; it is a normal device (without access tokens) with keys.

use serde_json::Value;

use super::{device_lists, keys, to_device};
use crate::{storage::devices, Core, Error, Result};

/// One `PUT /dehydrated_device`.
pub struct Dehydrate {
    pub device_id: String,
    pub display_name: Option<String>,
    pub device_data: Value,
    pub upload: keys::Upload,
}

/// Creates the dehydrated device, replacing (and deleting) an earlier one.
pub async fn put(core: &Core, user_id: &str, req: &Dehydrate) -> Result<()> {
    let Some(device_keys) = &req.upload.device_keys else {
        return Err(Error::BadJson("device_keys are required".into()));
    };
    keys::validate_device_keys(device_keys, user_id, &req.device_id)?;
    let mut tx = core.db.write().await?;
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(&req.device_id)
            .fetch_optional(&mut *tx)
            .await?;
    let old = current(core, &mut tx, user_id).await?;
    if existing.is_some() && old.as_ref().map(|o| &o.0) != Some(&req.device_id) {
        return Err(Error::InvalidParam("device ID is in use by another device".into()));
    }
    if let Some((old_id, _)) = &old {
        devices::delete(&mut tx, user_id, old_id).await?;
    }
    devices::upsert(&mut tx, user_id, &req.device_id, req.display_name.as_deref(), None).await?;
    sqlx::query("INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(&req.device_id)
        .bind(req.device_data.to_string())
        .execute(&mut *tx)
        .await?;
    keys::store_device_keys(&mut tx, user_id, &req.device_id, device_keys).await?;
    keys::store_one_time_keys(&mut tx, user_id, &req.device_id, &req.upload.one_time_keys).await?;
    keys::store_fallback_keys(&mut tx, user_id, &req.device_id, &req.upload.fallback_keys).await?;
    device_lists::record_changes(&mut tx, &[user_id]).await?;
    tx.commit().await?;
    device_lists::notify(core, user_id).await
}

async fn current(_core: &Core, conn: &mut sqlx::AnyConnection, user_id: &str) -> Result<Option<(String, Value)>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(d, data)| (d, serde_json::from_str(&data).unwrap_or_default())))
}

/// The user's dehydrated device: `(device ID, device data)`.
pub async fn get(core: &Core, user_id: &str) -> Result<Option<(String, Value)>> {
    let mut conn = core.db.conn().await?;
    current(core, &mut conn, user_id).await
}

/// Deletes the dehydrated device; returns its ID.
pub async fn delete(core: &Core, user_id: &str) -> Result<Option<String>> {
    let mut tx = core.db.write().await?;
    let Some((device_id, _)) = current(core, &mut tx, user_id).await? else {
        return Ok(None);
    };
    devices::delete(&mut tx, user_id, &device_id).await?;
    tx.commit().await?;
    device_lists::notify(core, user_id).await?;
    Ok(Some(device_id))
}

const PAGE: i64 = 100;

/// The dehydrated device's to-device messages after `next_batch` (a to-device position),
/// deleting those at or below it: the client got them in the previous page. Returns the
/// events and the token for the next page.
pub async fn events(
    core: &Core,
    user_id: &str,
    device_id: &str,
    next_batch: Option<&str>,
) -> Result<(Vec<Value>, String)> {
    match get(core, user_id).await? {
        Some((id, _)) if id == device_id => {}
        _ => return Err(Error::Forbidden("not your dehydrated device".into())),
    }
    let after = match next_batch {
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| Error::InvalidParam("invalid next_batch".into()))?,
        None => 0,
    };
    if after > 0 {
        to_device::acknowledge(core, user_id, device_id, after).await?;
    }
    let now = crate::streams::current_pos_or_zero(&core.db, "to_device").await?;
    let mut conn = core.db.conn().await?;
    let mut page = to_device::pending(&mut conn, user_id, device_id, after, now, PAGE).await?;
    // Messages of one send share a position: never end a page inside one, since the next page
    // starts after the whole position.
    if page.len() as i64 == PAGE {
        let last = page.last().map(|m| m.stream_pos);
        if page.iter().any(|m| Some(m.stream_pos) != last) {
            page.retain(|m| Some(m.stream_pos) != last);
        }
    }
    let next = page.last().map(|m| m.stream_pos).unwrap_or(after);
    Ok((page.into_iter().map(|m| m.event).collect(), next.to_string()))
}
