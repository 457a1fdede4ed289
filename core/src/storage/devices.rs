//! The `devices` table. Deleting a device also deletes its access and refresh tokens.

use sqlx::AnyConnection;

use crate::{util::now_ms, Db, Result};

#[derive(Clone, Debug)]
pub struct Device {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
}

type DeviceRow = (String, Option<String>, Option<i64>, Option<String>);

fn from_row(r: DeviceRow) -> Device {
    Device {
        device_id: r.0,
        display_name: r.1,
        last_seen_ts: r.2,
        last_seen_ip: r.3,
    }
}

/// Creates the device, or keeps an existing one of that ID (logging in again with a known
/// device ID reuses it); a new display name replaces the old one only when given.
pub async fn upsert(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    ip: Option<&str>,
) -> Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts)
         VALUES ($1, $2, $3, $4, $5, $4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
           display_name = COALESCE(excluded.display_name, devices.display_name),
           last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(display_name)
    .bind(now)
    .bind(ip)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list(db: &Db, user_id: &str) -> Result<Vec<Device>> {
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices
         WHERE user_id = $1 ORDER BY created_ts, device_id",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

pub async fn get(db: &Db, user_id: &str, device_id: &str) -> Result<Option<Device>> {
    let row: Option<DeviceRow> = sqlx::query_as(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(from_row))
}

/// Returns whether the device exists.
pub async fn set_display_name(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    name: Option<&str>,
) -> Result<bool> {
    let done = sqlx::query("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let found = done.rows_affected() == 1;
    if found {
        // The name is part of the keys others query (`unsigned.device_display_name`).
        crate::e2ee::device_lists::record_changes(conn, &[user_id]).await?;
    }
    Ok(found)
}

pub async fn touch(db: &Db, user_id: &str, device_id: &str, ip: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4 WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .bind(ip)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Deletes one device with its tokens.
pub async fn delete(conn: &mut AnyConnection, user_id: &str, device_id: &str) -> Result<()> {
    // A deleted device's pushers stop too: no notifications to a phone that logged out.
    // Its sightings (admin whois) go with it.
    for table in ["access_tokens", "refresh_tokens", "pushers", "devices", "user_ips"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    crate::e2ee::device_lists::forget_device(conn, user_id, device_id).await
}

/// Deletes every device of the user except `keep`, with their tokens.
pub async fn delete_all_except(conn: &mut AnyConnection, user_id: &str, keep: Option<&str>) -> Result<()> {
    let keep = keep.unwrap_or("");
    for table in ["access_tokens", "refresh_tokens", "pushers", "devices", "user_ips"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id <> $2"))
            .bind(user_id)
            .bind(keep)
            .execute(&mut *conn)
            .await?;
    }
    crate::e2ee::device_lists::forget_devices_except(conn, user_id, keep).await
}
