//! Device-list tracking: the `device_lists` stream records whose devices or keys changed, so
//! that everyone sharing a room with them re-queries their keys. `left` is derived at read time
//! from memberships that changed in the window.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use sqlx::AnyConnection;

use crate::{streams, sync::SyncToken, Core, Result};

/// Users whose device lists changed, and users who no longer share a room with the reader.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeviceListChanges {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// Records a change for each of `users` at one new position; call it last in the writing
/// transaction (see streams.rs).
pub async fn record_changes(conn: &mut AnyConnection, users: &[&str]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let pos = streams::next_pos(&mut *conn, "device_lists").await?;
    let unique: BTreeSet<&str> = users.iter().copied().collect();
    for user in unique {
        sqlx::query("INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)")
            .bind(pos)
            .bind(user)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Everyone who shares a joined room with `user_id` (the user included when they are in one).
pub async fn sharing_users(conn: &mut AnyConnection, user_id: &str) -> Result<HashSet<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT b.user_id FROM room_memberships a
         JOIN room_memberships b ON b.room_id = a.room_id
         WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Wakes the long-polling syncs of `user_id` and of everyone sharing a room with them; call
/// after the change committed.
pub async fn notify(core: &Core, user_id: &str) -> Result<()> {
    let mut conn = core.db.conn().await?;
    let mut users = sharing_users(&mut conn, user_id).await?;
    users.insert(user_id.to_owned());
    for user in users {
        core.notifier.user_changed(&user);
    }
    Ok(())
}

/// Removes everything end-to-end encryption kept for the user's devices matching
/// `device_op device` (`=` one device, `<>` all but one) and records a device-list change when
/// one of them had published keys. Runs inside the transaction that deletes the devices, as its
/// last step.
async fn forget(conn: &mut AnyConnection, user_id: &str, device_op: &str, device: &str) -> Result<()> {
    sqlx::query(&format!(
        "DELETE FROM e2e_signatures WHERE target_user = $1 AND target_key IN
           (SELECT device_id FROM e2e_device_keys WHERE user_id = $1 AND device_id {device_op} $2)"
    ))
    .bind(user_id)
    .bind(device)
    .execute(&mut *conn)
    .await?;
    for (table, user_col, device_col) in [
        ("e2e_one_time_keys", "user_id", "device_id"),
        ("e2e_fallback_keys", "user_id", "device_id"),
        ("to_device_messages", "recipient_user", "recipient_device"),
        ("dehydrated_devices", "user_id", "device_id"),
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE {user_col} = $1 AND {device_col} {device_op} $2"
        ))
        .bind(user_id)
        .bind(device)
        .execute(&mut *conn)
        .await?;
    }
    let had_keys = sqlx::query(&format!(
        "DELETE FROM e2e_device_keys WHERE user_id = $1 AND device_id {device_op} $2"
    ))
    .bind(user_id)
    .bind(device)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if had_keys {
        record_changes(conn, &[user_id]).await?;
    }
    Ok(())
}

/// Hook for deleting one device (see storage::devices::delete).
pub async fn forget_device(conn: &mut AnyConnection, user_id: &str, device_id: &str) -> Result<()> {
    forget(conn, user_id, "=", device_id).await
}

/// Hook for deleting all of a user's devices but `keep` (`""` keeps none).
pub async fn forget_devices_except(conn: &mut AnyConnection, user_id: &str, keep: &str) -> Result<()> {
    forget(conn, user_id, "<>", keep).await
}

/// What changed for `user_id` between two sync tokens: key changes of users sharing a room
/// (and the user's own), users who newly share a room (`changed`), and users who no longer
/// share any (`left`). Empty when `from` is the beginning (an initial sync).
/// `memberships_moved` false says the caller knows no membership event lies between the tokens.
pub async fn changes(
    conn: &mut AnyConnection,
    user_id: &str,
    from: &SyncToken,
    to: &SyncToken,
    memberships_moved: bool,
) -> Result<DeviceListChanges> {
    let mut changed = BTreeSet::new();
    if from.device_lists != to.device_lists {
        let key_changes: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2",
        )
        .bind(from.device_lists)
        .bind(to.device_lists)
        .fetch_all(&mut *conn)
        .await?;
        changed.extend(key_changes.into_iter().map(|r| r.0));
    }

    let mut gone = BTreeSet::new();
    let membership_changes: Vec<(String, String, String)> = if !memberships_moved || from.events == to.events {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT room_id, user_id, membership FROM room_memberships
         WHERE stream_pos > $2 AND stream_pos <= $3
           AND room_id IN (SELECT room_id FROM room_memberships WHERE user_id = $1)",
        )
        .bind(user_id)
        .bind(from.events)
        .bind(to.events)
        .fetch_all(&mut *conn)
        .await?
    };
    for (room_id, member, membership) in membership_changes {
        if member == user_id {
            // Our own join makes everyone there new to us; our leave may part us from them.
            let others = joined_members(conn, &room_id)
                .await?
                .into_iter()
                .filter(|u| u != user_id);
            if membership == "join" {
                changed.extend(others)
            } else {
                gone.extend(others)
            }
        } else if membership == "join" {
            changed.insert(member);
        } else {
            gone.insert(member);
        }
    }
    if changed.is_empty() && gone.is_empty() {
        // The usual case (a new message): no need to list everyone the user shares a room with.
        return Ok(DeviceListChanges::default());
    }
    let sharing = sharing_users(conn, user_id).await?;
    changed.retain(|u| u == user_id || sharing.contains(u));
    gone.retain(|u| u != user_id && !sharing.contains(u));
    Ok(DeviceListChanges {
        changed: changed.into_iter().collect(),
        left: gone.into_iter().collect(),
    })
}

async fn joined_members(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = 'join'")
            .bind(room_id)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The `device_lists` part of a sync from `since` (none for an initial sync) to `now`.
pub async fn for_sync(
    core: &Core,
    user_id: &str,
    since: Option<&SyncToken>,
    now: &SyncToken,
) -> Result<DeviceListChanges> {
    let Some(since) = since else {
        return Ok(DeviceListChanges::default());
    };
    let mut conn = core.db.conn().await?;
    changes(&mut conn, user_id, since, now, true).await
}
