//! Account data: a user's global and per-room data, and room tags, which are the room's
//! `m.tag` data (`{"tags": {tag: info}}`) edited one tag at a time.

use std::collections::HashSet;

use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use crate::{storage::account_data, Core, Error, Result};

const TAGS: &str = "m.tag";
const IGNORED_USERS: &str = "m.ignored_user_list";

/// The users `user_id` ignores (the keys of `ignored_users` in their `m.ignored_user_list`).
pub async fn ignored_users(conn: &mut AnyConnection, user_id: &str) -> Result<HashSet<String>> {
    let stored = account_data::get(conn, user_id, "", IGNORED_USERS).await?;
    let content: Value = stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    Ok(content["ignored_users"]
        .as_object()
        .map(|users| users.keys().cloned().collect())
        .unwrap_or_default())
}

/// Stores one piece of account data (`room_id` "" for global) and wakes the user's syncs,
/// which carry it from then on.
pub async fn put(core: &Core, user_id: &str, room_id: &str, data_type: &str, content: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    account_data::put(&mut tx, user_id, room_id, data_type, content).await?;
    tx.commit().await?;
    core.notifier.user_changed(user_id);
    Ok(())
}

/// The user's tags on a room, as `{"tags": {...}}` (empty when there are none).
pub async fn tags(core: &Core, user_id: &str, room_id: &str) -> Result<Value> {
    let mut conn = core.db.conn().await?;
    let stored = account_data::get(&mut conn, user_id, room_id, TAGS).await?;
    Ok(json!({ "tags": tag_map(stored.as_deref())? }))
}

/// Sets one tag (its `info`, e.g. `{"order": 0.5}`), keeping the others.
pub async fn set_tag(core: &Core, user_id: &str, room_id: &str, tag: &str, info: Value) -> Result<()> {
    edit_tags(core, user_id, room_id, |tags| {
        tags.insert(tag.to_owned(), info);
        true
    })
    .await
}

/// Removes one tag; removing a tag the room does not have changes nothing.
pub async fn remove_tag(core: &Core, user_id: &str, room_id: &str, tag: &str) -> Result<()> {
    edit_tags(core, user_id, room_id, |tags| tags.remove(tag).is_some()).await
}

/// Reads the room's tags and writes them back in one transaction when `edit` says it changed
/// them, so that syncs see the whole new `m.tag` content.
async fn edit_tags(
    core: &Core,
    user_id: &str,
    room_id: &str,
    edit: impl FnOnce(&mut Map<String, Value>) -> bool,
) -> Result<()> {
    let mut tx = core.db.write().await?;
    let stored = account_data::get(&mut tx, user_id, room_id, TAGS).await?;
    let mut tags = tag_map(stored.as_deref())?;
    if !edit(&mut tags) {
        return Ok(());
    }
    let content = json!({ "tags": tags }).to_string();
    account_data::put(&mut tx, user_id, room_id, TAGS, &content).await?;
    tx.commit().await?;
    core.notifier.user_changed(user_id);
    Ok(())
}

/// The tag map of stored `m.tag` content; content a client set through the generic account
/// data endpoint without a `tags` object counts as no tags.
fn tag_map(stored: Option<&str>) -> Result<Map<String, Value>> {
    let Some(stored) = stored else {
        return Ok(Map::new());
    };
    let content: Value = serde_json::from_str(stored).map_err(Error::internal)?;
    Ok(match content.get("tags") {
        Some(Value::Object(tags)) => tags.clone(),
        _ => Map::new(),
    })
}
