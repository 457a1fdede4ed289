//! Room upgrades: a replacement room with the old room's transferable state, local aliases
//! moved over, and the old room closed with a tombstone.

use ruma::{OwnedUserId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use super::{
    create::{self, CreateRoom, Preset},
    current_state, power, room_rules, send_in_tx,
};
use crate::{
    events::{builder::EventTemplate, rules_for, StateMap},
    storage::{events, rooms},
    Core, Error, Result,
};

/// The state the spec recommends carrying over (power levels last, so the other events are
/// sent while the upgrading user still has the creator's implicit power in the new room).
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.canonical_alias",
];

/// Old rooms get their sending and inviting raised to at least this level.
const RESTRICTED_LEVEL: i64 = 50;

#[derive(Clone, Debug)]
pub struct Upgrade {
    pub new_version: RoomVersionId,
    /// Extra creators of a v12 (privileged-creator) replacement room.
    pub additional_creators: Vec<OwnedUserId>,
}

/// Upgrades `room_id` for `user`; returns the replacement room's ID.
pub async fn upgrade_room(core: &Core, user: &UserId, room_id: &str, req: Upgrade) -> Result<String> {
    let new_rules = rules_for(req.new_version.as_str())?;
    let privileged = new_rules.authorization.explicitly_privilege_room_creators;
    let mut conn = core.db.conn().await?;
    let old_state = current_state(core, &mut conn, room_id).await?;
    check_may_upgrade(core, &mut conn, user, room_id, &old_state).await?;

    let create_content = state_content(&mut conn, &old_state, "m.room.create", "")
        .await?
        .unwrap_or_default();
    let mut creation_content = Map::new();
    // The predecessor names the old room's tombstone, which names the new room: the new room's
    // ID is chosen first. A v12 room's ID is the hash of its create event, so the tombstone
    // comes after it there and the predecessor names the room alone (as with Synapse).
    let hashed_ids = new_rules.authorization.room_create_event_id_as_room_id;
    let new_room_id = (!hashed_ids).then(|| create::new_room_id(core));
    creation_content.insert("predecessor".into(), json!({ "room_id": room_id }));
    for key in ["type", "m.federate"] {
        if let Some(v) = create_content.get(key) {
            creation_content.insert(key.into(), v.clone());
        }
    }
    let mut creators = vec![user.to_string()];
    if privileged && !req.additional_creators.is_empty() {
        creation_content.insert("additional_creators".into(), json!(req.additional_creators));
        creators.extend(req.additional_creators.iter().map(|u| u.to_string()));
    }

    let mut initial_state = transferred_state(&mut conn, &old_state, &create_content).await?;
    if let Some(pl) = state_content(&mut conn, &old_state, "m.room.power_levels", "").await? {
        let old_creators = privileged_creators(core, &mut conn, room_id, &old_state).await?;
        initial_state.push(EventTemplate::state(
            "m.room.power_levels",
            "",
            new_power_levels(pl, privileged, &creators, &old_creators),
        ));
    }
    let join_rule = state_content(&mut conn, &old_state, "m.room.join_rules", "")
        .await?
        .unwrap_or_default();
    let was_public = rooms::is_public(&mut conn, room_id).await?.unwrap_or(false);
    drop(conn);

    let new_room = CreateRoom {
        version: req.new_version,
        preset: if join_rule["join_rule"] == "public" {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        },
        creation_content,
        power_level_override: None,
        name: None,
        topic: None,
        alias: None,
        invite: Vec::new(),
        is_direct: false,
        initial_state,
        public: was_public,
    };
    let new_room = replace_room(core, user, room_id, new_room, new_room_id).await?;
    // Like Synapse, what follows is best effort: the upgrade itself has happened.
    if let Err(err) = restrict_old_room(core, user, room_id).await {
        tracing::info!(%room_id, error = %err, "could not restrict the old room's power levels");
    }
    if let Err(err) = move_aliases(core, user, room_id, &new_room, was_public).await {
        tracing::warn!(%room_id, error = %err, "could not move aliases to the upgraded room");
    }
    Ok(new_room)
}

/// Tombstones `room_id` and creates its replacement in one transaction, so neither happens
/// without the other: the tombstone first when the new room's ID is known beforehand (its
/// create event then names the tombstone), else the new room first.
async fn replace_room(
    core: &Core,
    user: &UserId,
    room_id: &str,
    mut new_room: CreateRoom,
    new_room_id: Option<String>,
) -> Result<String> {
    let profiles = create::Profiles::read(core, user, &new_room).await?;
    let mut tx = core.db.write().await?;
    let Some(head) = rooms::lock(&mut tx, room_id).await? else {
        return Err(Error::NotFound("Unknown room".into()));
    };
    let tombstone = |new_room: &str| {
        EventTemplate::state(
            "m.room.tombstone",
            "",
            json!({ "body": "This room has been replaced", "replacement_room": new_room }),
        )
    };
    let (created, sent) = match new_room_id {
        Some(new_room_id) => {
            let (pdu, _, _) = send_in_tx(core, &mut tx, room_id, user, &tombstone(&new_room_id), &head).await?;
            new_room.creation_content.insert(
                "predecessor".into(),
                json!({ "room_id": room_id, "event_id": pdu.event_id }),
            );
            let (created, mut sent) =
                create::create_in_tx(core, &mut tx, user, new_room, profiles, Some(new_room_id)).await?;
            sent.push(pdu);
            (created, sent)
        }
        None => {
            let (created, mut sent) = create::create_in_tx(core, &mut tx, user, new_room, profiles, None).await?;
            let (pdu, _, _) = send_in_tx(core, &mut tx, room_id, user, &tombstone(&created.room_id), &head).await?;
            sent.push(pdu);
            (created, sent)
        }
    };
    tx.commit().await?;
    for pdu in &sent {
        super::notify_committed(core, pdu);
    }
    Ok(created.room_id)
}

/// Only a joined user with the power to send `m.room.tombstone` may upgrade.
async fn check_may_upgrade(
    core: &Core,
    conn: &mut AnyConnection,
    user: &UserId,
    room_id: &str,
    state: &StateMap,
) -> Result<()> {
    let (_, rules) = room_rules(core, conn, room_id).await?;
    let joined = rooms::membership(conn, room_id, user.as_str())
        .await?
        .is_some_and(|m| m.membership == "join");
    if !joined {
        return Err(Error::Forbidden("You must be joined to the room to upgrade it".into()));
    }
    let level = power::user_level(conn, &rules, state, user.as_str()).await?;
    let needed = power::event_level(conn, &rules, state, "m.room.tombstone", true).await?;
    if level < needed {
        return Err(Error::Forbidden(
            "You do not have the power to upgrade this room".into(),
        ));
    }
    Ok(())
}

async fn state_content(
    conn: &mut AnyConnection,
    state: &StateMap,
    event_type: &str,
    key: &str,
) -> Result<Option<Value>> {
    let Some(id) = state.get(&(event_type.to_owned(), key.to_owned())) else {
        return Ok(None);
    };
    let Some(stored) = events::get(conn, id).await? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&stored.json).unwrap_or_default();
    Ok(Some(json["content"].clone()).filter(|c| c.is_object()))
}

/// Templates for the transferred state; a space also keeps its children.
async fn transferred_state(
    conn: &mut AnyConnection,
    state: &StateMap,
    create_content: &Value,
) -> Result<Vec<EventTemplate>> {
    let mut out = Vec::new();
    for kind in TRANSFERRED {
        match state_content(conn, state, kind, "").await? {
            // Empty content is how a state event is "removed"; nothing to carry over then.
            Some(content) if content.as_object().is_some_and(|o| !o.is_empty()) => {
                out.push(EventTemplate::state(kind, "", content));
            }
            // No guest access event means `forbidden`; the new room says so explicitly, so
            // that it keeps the old room's rule whatever defaults apply there (Synapse's
            // upgraded rooms always carry one, and sytest counts it).
            None if *kind == "m.room.guest_access" => {
                out.push(EventTemplate::state(kind, "", json!({ "guest_access": "forbidden" })));
            }
            _ => {}
        }
    }
    if create_content["type"] == "m.space" {
        let children: Vec<String> = state
            .keys()
            .filter(|(t, _)| t == "m.space.child")
            .map(|(_, k)| k.clone())
            .collect();
        for child in children {
            if let Some(content) = state_content(conn, state, "m.space.child", &child).await? {
                if content["via"].as_array().is_some_and(|v| !v.is_empty()) {
                    out.push(EventTemplate::state("m.space.child", &child, content));
                }
            }
        }
    }
    Ok(out)
}

/// The old room's creators when its version gives them unlimited power (v12), else none.
async fn privileged_creators(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    state: &StateMap,
) -> Result<Vec<String>> {
    let (_, rules) = room_rules(core, conn, room_id).await?;
    if !rules.authorization.explicitly_privilege_room_creators {
        return Ok(Vec::new());
    }
    let Some(id) = state.get(&("m.room.create".to_owned(), String::new())) else {
        return Ok(Vec::new());
    };
    let Some(create) = events::get(conn, id).await? else {
        return Ok(Vec::new());
    };
    let json: Value = serde_json::from_str(&create.json).unwrap_or_default();
    let mut out = vec![create.sender];
    for c in json["content"]["additional_creators"].as_array().into_iter().flatten() {
        if let Some(c) = c.as_str() {
            out.push(c.to_owned());
        }
    }
    Ok(out)
}

/// The old power levels for the new room: everyone keeps their level. A v12 room's creators
/// must not appear in `users` (their power is implicit); moving away from v12, the old
/// creators get an explicit 100 so they do not lose their power.
fn new_power_levels(mut pl: Value, privileged: bool, new_creators: &[String], old_creators: &[String]) -> Value {
    if !pl["users"].is_object() {
        pl["users"] = json!({});
    }
    let Some(users) = pl["users"].as_object_mut() else {
        return pl;
    };
    if privileged {
        for c in new_creators {
            users.remove(c);
        }
    } else {
        for c in old_creators {
            users.entry(c.clone()).or_insert(json!(100));
        }
    }
    pl
}

/// Stops ordinary users from talking or inviting in the old room: `events_default` and
/// `invite` to at least the greater of 50 and `users_default + 1`.
async fn restrict_old_room(core: &Core, user: &UserId, room_id: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    let Some(head) = rooms::lock(&mut tx, room_id).await? else {
        return Ok(());
    };
    let Some(mut pl) = super::current_state_content(&mut tx, room_id, "m.room.power_levels", "").await? else {
        return Ok(());
    };
    let users_default = level(&pl["users_default"]).unwrap_or(0);
    let restricted = RESTRICTED_LEVEL.max(users_default + 1);
    let mut changed = false;
    for key in ["events_default", "invite"] {
        let current = level(&pl[key]).unwrap_or(0);
        if current < restricted {
            pl[key] = json!(restricted);
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    let (pdu, _, _) = send_in_tx(
        core,
        &mut tx,
        room_id,
        user,
        &EventTemplate::state("m.room.power_levels", "", pl),
        &head,
    )
    .await?;
    tx.commit().await?;
    super::notify_committed(core, &pdu);
    Ok(())
}

fn level(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Points the old room's local aliases (and its directory listing) at the new room and drops
/// them from the old room's canonical alias event.
async fn move_aliases(core: &Core, user: &UserId, old_room: &str, new_room: &str, was_public: bool) -> Result<()> {
    let mut tx = core.db.write().await?;
    let aliases = rooms::aliases_of_room(&mut tx, old_room).await?;
    for alias in &aliases {
        let creator = rooms::alias_get(&mut tx, alias)
            .await?
            .map(|(_, c)| c)
            .unwrap_or_else(|| user.to_string());
        rooms::alias_delete(&mut tx, alias).await?;
        rooms::alias_insert(&mut tx, alias, new_room, &creator).await?;
    }
    if was_public {
        rooms::set_public(&mut tx, old_room, false).await?;
    }
    tx.commit().await?;
    clear_old_canonical_alias(core, user, old_room).await
}

async fn clear_old_canonical_alias(core: &Core, user: &UserId, room_id: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    let Some(head) = rooms::lock(&mut tx, room_id).await? else {
        return Ok(());
    };
    let current = super::current_state_content(&mut tx, room_id, "m.room.canonical_alias", "").await?;
    if current.as_ref().and_then(Value::as_object).is_none_or(|o| o.is_empty()) {
        return Ok(());
    }
    let (pdu, _, _) = send_in_tx(
        core,
        &mut tx,
        room_id,
        user,
        &EventTemplate::state("m.room.canonical_alias", "", json!({})),
        &head,
    )
    .await?;
    tx.commit().await?;
    super::notify_committed(core, &pdu);
    Ok(())
}
