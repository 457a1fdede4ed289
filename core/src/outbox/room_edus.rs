//! EDUs about a room (typing, receipts) for every other server with a member in it.

use serde_json::Value;

use crate::{storage::rooms, Core, Result};

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
    if destinations.is_empty() {
        return Ok(());
    }
    let mut tx = core.db.write().await?;
    for destination in &destinations {
        super::enqueue_edu(&mut tx, destination, edu).await?;
    }
    tx.commit().await?;
    // The sender listens to the notifier.
    core.notifier.room_changed(room_id);
    Ok(())
}
