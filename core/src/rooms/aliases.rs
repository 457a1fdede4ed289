//! Room aliases of this server: creating, resolving and deleting them, and keeping the room's
//! `m.room.canonical_alias` free of aliases that no longer exist.

use ruma::{RoomAliasId, UserId};
use serde_json::{Map, Value};
use sqlx::AnyConnection;

use super::{current_state_content, directory, room_rules, send_in_tx, visibility};
use crate::{events::builder::EventTemplate, storage::rooms, Core, Error, Result};

/// The caller of an alias operation.
#[derive(Clone, Copy, Debug)]
pub struct Actor<'a> {
    pub user: &'a UserId,
    pub is_admin: bool,
}

/// Aliases name rooms on their server; only ours can be managed here.
fn ensure_local(core: &Core, alias: &RoomAliasId) -> Result<()> {
    if alias.server_name() != core.server_name {
        return Err(Error::InvalidParam(format!("Room alias {alias} is not on this server")));
    }
    Ok(())
}

/// Maps `alias` to `room_id`. Returns false when the alias is already taken (by any room).
pub async fn create(core: &Core, alias: &RoomAliasId, room_id: &str, actor: Actor<'_>) -> Result<bool> {
    ensure_local(core, alias)?;
    crate::appservice::check_alias_claim(core, alias.as_str(), actor.user.as_str())?;
    let mut tx = core.db.write().await?;
    room_rules(core, &mut tx, room_id).await?;
    // Admins may name rooms they are not in; anyone else must be joined.
    if !actor.is_admin && !is_joined(&mut tx, room_id, actor.user).await? {
        return Err(Error::Forbidden(
            "You must be joined to the room to give it an alias".into(),
        ));
    }
    if !rooms::alias_insert(&mut tx, alias.as_str(), room_id, actor.user.as_str()).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

async fn is_joined(conn: &mut AnyConnection, room_id: &str, user: &UserId) -> Result<bool> {
    Ok(rooms::membership(conn, room_id, user.as_str())
        .await?
        .is_some_and(|m| m.membership == "join"))
}

/// The room a local alias points at; NotFound when it is unknown or belongs to another server
/// (resolving those needs federation, which is not there yet).
pub async fn resolve(core: &Core, alias: &RoomAliasId) -> Result<String> {
    if alias.server_name() != core.server_name {
        return Err(Error::NotFound(format!(
            "Room alias {alias} is not on this server, and federation is not supported yet"
        )));
    }
    let mut conn = core.db.conn().await?;
    match rooms::alias_get(&mut conn, alias.as_str()).await? {
        Some((room_id, _)) => Ok(room_id),
        None => Err(Error::NotFound(format!("Room alias {alias} not found"))),
    }
}

/// Deletes an alias, if the caller created it, is a server admin, or curates the room; then
/// drops it from the room's canonical alias event when the caller may send that.
pub async fn delete(core: &Core, alias: &RoomAliasId, actor: Actor<'_>) -> Result<()> {
    ensure_local(core, alias)?;
    let mut tx = core.db.write().await?;
    let Some((room_id, creator)) = rooms::alias_get(&mut tx, alias.as_str()).await? else {
        return Err(Error::NotFound(format!("Room alias {alias} not found")));
    };
    let allowed = creator == actor.user.as_str()
        || actor.is_admin
        || directory::may_curate(core, &mut tx, &room_id, actor.user, false).await?;
    if !allowed {
        return Err(Error::Forbidden("You may not delete this alias".into()));
    }
    rooms::alias_delete(&mut tx, alias.as_str()).await?;
    tx.commit().await?;
    // The spec recommends that the deletion succeeds even when the canonical alias event
    // cannot be updated, so a failure there is only logged.
    if let Err(err) = drop_from_canonical(core, &room_id, alias, actor.user).await {
        tracing::info!(%alias, %room_id, error = %err, "canonical alias not updated after alias deletion");
    }
    Ok(())
}

/// Sends an `m.room.canonical_alias` without `alias`, if the current one mentions it.
async fn drop_from_canonical(core: &Core, room_id: &str, alias: &RoomAliasId, sender: &UserId) -> Result<()> {
    let mut tx = core.db.write().await?;
    let Some(head) = rooms::lock(&mut tx, room_id).await? else {
        return Ok(());
    };
    let Some(Value::Object(content)) = current_state_content(&mut tx, room_id, "m.room.canonical_alias", "").await?
    else {
        return Ok(());
    };
    let Some(updated) = without_alias(content, alias.as_str()) else {
        return Ok(());
    };
    let template = EventTemplate::state("m.room.canonical_alias", "", Value::Object(updated));
    let (pdu, _, _) = send_in_tx(core, &mut tx, room_id, sender, &template, &head).await?;
    tx.commit().await?;
    super::notify_committed(core, &pdu);
    Ok(())
}

/// The canonical alias content with `alias` removed, or `None` when it did not mention it.
/// Emptied fields are removed rather than left empty.
fn without_alias(mut content: Map<String, Value>, alias: &str) -> Option<Map<String, Value>> {
    let mut changed = false;
    if content.get("alias").and_then(Value::as_str) == Some(alias) {
        content.remove("alias");
        changed = true;
    }
    if let Some(Value::Array(alt)) = content.get_mut("alt_aliases") {
        let before = alt.len();
        alt.retain(|a| a.as_str() != Some(alias));
        changed |= alt.len() != before;
        if alt.is_empty() {
            content.remove("alt_aliases");
        }
    }
    changed.then_some(content)
}

/// The local aliases of a room, for users who may read it (and server admins).
pub async fn of_room(core: &Core, room_id: &str, actor: Actor<'_>) -> Result<Vec<String>> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await?;
    if !actor.is_admin && !visibility::can_read_room(&mut conn, actor.user.as_str(), room_id).await? {
        return Err(Error::Forbidden(
            "You are not allowed to see this room's aliases".into(),
        ));
    }
    rooms::aliases_of_room(&mut conn, room_id).await
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::without_alias;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn removes_main_and_alt() {
        let c = obj(json!({"alias": "#a:x", "alt_aliases": ["#a:x", "#b:x"]}));
        assert_eq!(
            Value::Object(without_alias(c, "#a:x").unwrap()),
            json!({"alt_aliases": ["#b:x"]})
        );
        let c = obj(json!({"alias": "#b:x", "alt_aliases": ["#a:x"]}));
        assert_eq!(
            Value::Object(without_alias(c, "#a:x").unwrap()),
            json!({"alias": "#b:x"})
        );
        assert!(without_alias(obj(json!({"alias": "#b:x"})), "#a:x").is_none());
    }
}
