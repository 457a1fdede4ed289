//! Purging a room: every row this server keeps about it, removed in one transaction under the
//! room's lock, so no event can enter the room half-way through (a send waiting on the lock
//! then finds no room).
//!
//! Users' own data that merely names the room stays: key backups (the keys are theirs) and
//! pushers. Media posted in the room stays too (an admin deletes or quarantines it apart).

use crate::{storage::rooms as room_store, Core, Error, Result};

/// What a purge removes, in an order that leaves nothing pointing at removed rows while the
/// transaction runs: rows naming the room's events first, the events, then the room's row.
const STATEMENTS: [&str; 18] = [
    "DELETE FROM event_edges WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
    "DELETE FROM event_auth WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
    "DELETE FROM federation_outbox WHERE kind = 'pdu' AND event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
    "DELETE FROM event_relations WHERE room_id = $1",
    "DELETE FROM event_search WHERE room_id = $1",
    "DELETE FROM event_push_actions WHERE room_id = $1",
    "DELETE FROM receipts WHERE room_id = $1",
    "DELETE FROM event_reports WHERE room_id = $1",
    "DELETE FROM account_data WHERE room_id = $1",
    "DELETE FROM delayed_events WHERE room_id = $1",
    "DELETE FROM rtc_delegations WHERE room_id = $1",
    "DELETE FROM state_group_entries WHERE group_id IN (SELECT group_id FROM state_groups WHERE room_id = $1)",
    "DELETE FROM state_groups WHERE room_id = $1",
    "DELETE FROM current_state WHERE room_id = $1",
    "DELETE FROM room_memberships WHERE room_id = $1",
    "DELETE FROM room_aliases WHERE room_id = $1",
    "DELETE FROM events WHERE room_id = $1",
    "DELETE FROM rooms WHERE room_id = $1",
];

/// Removes a room from the database. With `force` false, refused while local users are still
/// joined. A room not stored here is NotFound.
pub async fn purge_room(core: &Core, room_id: &str, force: bool) -> Result<()> {
    let mut tx = core.db.write().await?;
    if room_store::lock(&mut tx, room_id).await?.is_none() {
        return Err(Error::NotFound("Room not found".into()));
    }
    if !force {
        let local_joined: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM room_memberships WHERE room_id = $1 AND membership = 'join'
             AND SUBSTR(user_id, LENGTH(user_id) - LENGTH($2) + 1) = $2",
        )
        .bind(room_id)
        .bind(format!(":{}", core.server_name))
        .fetch_one(&mut *tx)
        .await?;
        if local_joined > 0 {
            return Err(Error::InvalidParam(format!(
                "Cannot purge room: {local_joined} local users are still in it"
            )));
        }
    }
    for sql in STATEMENTS {
        sqlx::query(sql).bind(room_id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    forget_cached(core, room_id);
    tracing::info!(room_id, "purged room");
    Ok(())
}

/// Drops what this process remembers of the purged room: its version, and parsed events
/// (which are cached by event ID alone, so all of them go: purges are rare). State groups are
/// cached by their IDs, which nothing refers to any more.
fn forget_cached(core: &Core, room_id: &str) {
    let caches = core.db.caches();
    caches.room_versions.remove(room_id);
    caches.graph_events.clear();
    core.notifier.room_changed(room_id);
}
