//! EDUs about a room (typing, receipts) for every other server with a member in it, and EDUs
//! about a user (presence) for every other server sharing a room with them.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{e2ee::device_lists::sharing_users, storage::rooms, Core, Result};

/// Queues `edu` (`{"edu_type": ..., "content": ...}`) for every server in the room but this
/// one, and wakes the sender. Nothing is queued for a room only this server is in.
pub async fn enqueue_for_room(core: &Core, room_id: &str, edu: &Value) -> Result<()> {
    let destinations: Vec<String> = {
        let mut conn = core.db.conn().await?;
        rooms::servers_in_room(&mut conn, room_id).await?
    }
    .into_iter()
    .filter(|s| s != core.server_name.as_str())
    .collect();
    enqueue(core, &destinations, edu).await?;
    // The sender listens to the notifier.
    core.notifier.room_changed(room_id);
    Ok(())
}

/// Queues `edu` for every other server with a member in a room `user_id` is joined to, and
/// wakes the sender when there is one.
pub async fn enqueue_for_users_servers(core: &Core, user_id: &str, edu: &Value) -> Result<()> {
    let destinations: BTreeSet<String> = {
        let mut conn = core.db.conn().await?;
        sharing_users(&mut conn, user_id).await?
    }
    .iter()
    .filter_map(|u| u.split_once(':').map(|(_, server)| server.to_owned()))
    .filter(|s| s != core.server_name.as_str())
    .collect();
    if destinations.is_empty() {
        return Ok(());
    }
    enqueue(core, &destinations.into_iter().collect::<Vec<_>>(), edu).await?;
    // The sender listens to the notifier.
    core.notifier.user_changed(user_id);
    Ok(())
}

async fn enqueue(core: &Core, destinations: &[String], edu: &Value) -> Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let mut tx = core.db.write().await?;
    for destination in destinations {
        super::enqueue_edu(&mut tx, destination, edu).await?;
    }
    tx.commit().await
}
