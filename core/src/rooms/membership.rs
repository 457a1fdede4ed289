//! Membership changes: join, invite, leave, kick, ban, unban, knock, forget. The auth rules
//! decide; the checks here only turn the common refusals into clear errors first.

use ruma::UserId;
use serde_json::{json, Value};

use super::{current_state, power, room_rules, send, Sent};
use crate::{
    events::builder::EventTemplate,
    storage::{rooms, users},
    Core, Error, Result,
};

async fn membership_of(core: &Core, room_id: &str, user: &str) -> Result<Option<String>> {
    let mut conn = core.db.conn().await?;
    Ok(rooms::membership(&mut conn, room_id, user).await?.map(|m| m.membership))
}

async fn ensure_room(core: &Core, room_id: &str) -> Result<()> {
    let mut conn = core.db.conn().await?;
    room_rules(core, &mut conn, room_id).await.map(|_| ())
}

fn with_reason(mut content: Value, reason: Option<&str>) -> Value {
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    content
}

async fn profile_content(core: &Core, user: &UserId, membership: &str) -> Result<Value> {
    let mut content = json!({ "membership": membership });
    if let Some(p) = users::get(&core.db, user.as_str()).await? {
        if let Some(name) = p.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = p.avatar_url {
            content["avatar_url"] = json!(url);
        }
    }
    Ok(content)
}

async fn send_member(core: &Core, room_id: &str, sender: &UserId, target: &str, content: Value) -> Result<Sent> {
    send(
        core,
        room_id,
        sender,
        EventTemplate::state("m.room.member", target, content),
        None,
    )
    .await
}

/// The servers of whoever invited `user` to the room, if they are invited: where a room this
/// server is not in can be joined through.
pub async fn invite_servers(core: &Core, room_id: &str, user: &UserId) -> Result<Vec<ruma::OwnedServerName>> {
    let mut conn = core.db.conn().await?;
    let Some(m) = rooms::membership(&mut conn, room_id, user.as_str()).await? else {
        return Ok(Vec::new());
    };
    if m.membership != "invite" {
        return Ok(Vec::new());
    }
    let Some(invite) = crate::storage::events::get(&mut conn, &m.event_id).await? else {
        return Ok(Vec::new());
    };
    Ok(UserId::parse(&invite.sender)
        .ok()
        .map(|sender| sender.server_name().to_owned())
        .into_iter()
        .collect())
}

/// After a profile change: a new join event in each room the user is in, carrying the display
/// name and avatar now in their profile, so that members (here and on other servers) see the
/// change. Rooms whose member event already matches are left alone; a room that refuses the
/// event (the user lost the right to change their own state there) is skipped.
pub async fn refresh_profile(core: &Core, user: &UserId) -> Result<()> {
    let rooms_joined = {
        let mut conn = core.db.conn().await?;
        rooms::rooms_of_user(&mut conn, user.as_str(), "join").await?
    };
    let profile = profile_content(core, user, "join").await?;
    for m in rooms_joined {
        let current = {
            let mut conn = core.db.conn().await?;
            super::current_state_content(&mut conn, &m.room_id, "m.room.member", user.as_str()).await?
        };
        let Some(mut content) = current else { continue };
        if content["displayname"] == profile["displayname"] && content["avatar_url"] == profile["avatar_url"] {
            continue;
        }
        for field in ["displayname", "avatar_url"] {
            match profile.get(field) {
                Some(value) => content[field] = value.clone(),
                None => {
                    if let Some(object) = content.as_object_mut() {
                        object.remove(field);
                    }
                }
            }
        }
        if let Err(e) = send_member(core, &m.room_id, user, user.as_str(), content).await {
            tracing::info!(room_id = %m.room_id, %user, error = %e, "cannot carry a profile change into a room");
        }
    }
    Ok(())
}

/// Joins a local room. `custom` holds fields the client added to the join's content (kept,
/// as Synapse keeps them, under the membership and profile fields).
pub async fn join(
    core: &Core,
    room_id: &str,
    user: &UserId,
    reason: Option<&str>,
    custom: &serde_json::Map<String, serde_json::Value>,
) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    if membership_of(core, room_id, user.as_str()).await?.as_deref() == Some("ban") {
        return Err(Error::Forbidden("You are banned from this room".into()));
    }
    let mut content = with_reason(profile_content(core, user, "join").await?, reason);
    for (key, value) in custom {
        if content.get(key).is_none() && key != "join_authorised_via_users_server" {
            content[key] = value.clone();
        }
    }
    if let Some(authoriser) = restricted_join_authoriser(core, room_id, user).await? {
        content["join_authorised_via_users_server"] = json!(authoriser);
    }
    send_member(core, room_id, user, user.as_str(), content).await
}

/// For a restricted room the user may join through an allowed room, picks a local member who
/// can invite to sign off the join (`join_authorised_via_users_server`).
pub(super) async fn restricted_join_authoriser(core: &Core, room_id: &str, user: &UserId) -> Result<Option<String>> {
    let mut conn = core.db.conn().await?;
    let Some(join_rules) = super::current_state_content(&mut conn, room_id, "m.room.join_rules", "").await? else {
        return Ok(None);
    };
    let rule = join_rules["join_rule"].as_str().unwrap_or_default();
    if rule != "restricted" && rule != "knock_restricted" {
        return Ok(None);
    }
    // Invited or already joined users need no authorisation.
    if let Some(m) = rooms::membership(&mut conn, room_id, user.as_str()).await? {
        if m.membership == "invite" || m.membership == "join" {
            return Ok(None);
        }
    }
    let allowed_rooms: Vec<String> = join_rules["allow"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room_membership")
                .filter_map(|e| e["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut in_allowed = false;
    for allowed in &allowed_rooms {
        if rooms::membership(&mut conn, allowed, user.as_str())
            .await?
            .is_some_and(|m| m.membership == "join")
        {
            in_allowed = true;
            break;
        }
    }
    if !in_allowed {
        return Err(Error::Forbidden(
            "You are not a member of a room that allows you to join".into(),
        ));
    }
    let (_, rules) = room_rules(core, &mut conn, room_id).await?;
    let state = current_state(core, &mut conn, room_id).await?;
    let invite_level = power::action_level(&mut conn, &rules, &state, "invite").await?;
    for member in rooms::members(&mut conn, room_id, "join").await? {
        let Ok(member_id) = UserId::parse(&member.user_id) else {
            continue;
        };
        if core.is_local(&member_id)
            && power::user_level(&mut conn, &rules, &state, &member.user_id).await? >= invite_level
        {
            return Ok(Some(member.user_id));
        }
    }
    Err(Error::Forbidden(
        "No member of this room can authorise your join".into(),
    ))
}

pub async fn invite(
    core: &Core,
    room_id: &str,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<Sent> {
    let content = invite_content(core, room_id, target, reason, is_direct).await?;
    send_member(core, room_id, sender, target.as_str(), content).await
}

/// The content of an invite of `target`, after the checks that make refusals clear.
async fn invite_content(
    core: &Core,
    room_id: &str,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<Value> {
    ensure_room(core, room_id).await?;
    match membership_of(core, room_id, target.as_str()).await?.as_deref() {
        Some("join") => return Err(Error::Forbidden(format!("{target} is already in the room"))),
        Some("ban") => return Err(Error::Forbidden(format!("{target} is banned from the room"))),
        _ => {}
    }
    if users::get(&core.db, target.as_str())
        .await?
        .is_none_or(|u| u.deactivated)
        && core.is_local(target)
    {
        return Err(Error::NotFound(format!("Unknown user {target}")));
    }
    let mut content = with_reason(profile_content(core, target, "invite").await?, reason);
    if is_direct {
        content["is_direct"] = json!(true);
    }
    Ok(content)
}

/// An invite of a user of another server, built on the room's current head and checked, but
/// not sent: their server countersigns it first (`/invite`), and it enters the room through
/// the room writer after. With it, the room's stripped state for the invitee (the signed
/// events, as servers since Matrix 1.16 expect).
pub async fn build_remote_invite(
    core: &Core,
    room_id: &str,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<(String, crate::events::Pdu, Vec<String>)> {
    let content = invite_content(core, room_id, target, reason, is_direct).await?;
    let template = EventTemplate::state("m.room.member", target.as_str(), content);
    let mut conn = core.db.conn().await?;
    let (version, rules) = room_rules(core, &mut conn, room_id).await?;
    let head = rooms::head(&mut conn, room_id).await?;
    let state = current_state(core, &mut conn, room_id).await?;
    let pdu =
        crate::events::builder::build(core, &mut conn, &rules, Some(room_id), sender, &template, &head, &state).await?;
    // Refused here with the auth rules' reason rather than after a round trip.
    crate::rooms::writer::prepare_local(core, &mut conn, &rules, pdu.clone()).await?;
    let stripped = stripped_state_pdus(&mut conn, &state).await?;
    Ok((version, pdu, stripped))
}

/// The state an invitee or a knocker sees of a room before joining, as the signed events
/// servers send each other (Matrix 1.16).
pub async fn stripped_state_pdus(
    conn: &mut sqlx::AnyConnection,
    state: &crate::events::StateMap,
) -> Result<Vec<String>> {
    let ids: Vec<String> = INVITE_STATE_TYPES
        .iter()
        .filter_map(|t| state.get(&((*t).to_owned(), String::new())).cloned())
        .collect();
    Ok(crate::storage::events::get_many(conn, &ids)
        .await?
        .into_iter()
        .map(|e| e.json)
        .collect())
}

/// `stripped_state_pdus` of a room's current state.
pub async fn current_stripped_state(core: &Core, room_id: &str) -> Result<Vec<String>> {
    let mut conn = core.db.conn().await?;
    let state = current_state(core, &mut conn, room_id).await?;
    stripped_state_pdus(&mut conn, &state).await
}

/// The state an invitee sees of a room before joining.
pub const INVITE_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

pub async fn leave(core: &Core, room_id: &str, user: &UserId, reason: Option<&str>) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    match membership_of(core, room_id, user.as_str()).await?.as_deref() {
        Some("join") | Some("invite") | Some("knock") => {}
        _ => return Err(Error::Forbidden("You are not in this room".into())),
    }
    send_member(
        core,
        room_id,
        user,
        user.as_str(),
        with_reason(json!({ "membership": "leave" }), reason),
    )
    .await
}

pub async fn kick(core: &Core, room_id: &str, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    match membership_of(core, room_id, target.as_str()).await?.as_deref() {
        Some("join") | Some("invite") | Some("knock") => {}
        _ => return Err(Error::Forbidden(format!("{target} is not in the room"))),
    }
    send_member(
        core,
        room_id,
        sender,
        target.as_str(),
        with_reason(json!({ "membership": "leave" }), reason),
    )
    .await
}

pub async fn ban(core: &Core, room_id: &str, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    send_member(
        core,
        room_id,
        sender,
        target.as_str(),
        with_reason(json!({ "membership": "ban" }), reason),
    )
    .await
}

pub async fn unban(core: &Core, room_id: &str, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    if membership_of(core, room_id, target.as_str()).await?.as_deref() != Some("ban") {
        return Err(Error::Forbidden(format!("{target} is not banned")));
    }
    send_member(
        core,
        room_id,
        sender,
        target.as_str(),
        with_reason(json!({ "membership": "leave" }), reason),
    )
    .await
}

pub async fn knock(core: &Core, room_id: &str, user: &UserId, reason: Option<&str>) -> Result<Sent> {
    ensure_room(core, room_id).await?;
    match membership_of(core, room_id, user.as_str()).await?.as_deref() {
        Some("ban") => return Err(Error::Forbidden("You are banned from this room".into())),
        Some("join") => return Err(Error::Forbidden("You are already in this room".into())),
        _ => {}
    }
    let content = with_reason(profile_content(core, user, "knock").await?, reason);
    send_member(core, room_id, user, user.as_str(), content).await
}

pub async fn forget(core: &Core, room_id: &str, user: &UserId) -> Result<()> {
    match membership_of(core, room_id, user.as_str()).await?.as_deref() {
        Some("join") | Some("invite") | Some("knock") => Err(Error::InvalidParam(
            "You must leave the room before forgetting it".into(),
        )),
        None => Err(Error::NotFound("You were never in this room".into())),
        _ => {
            let mut tx = core.db.write().await?;
            rooms::forget(&mut tx, room_id, user.as_str()).await?;
            tx.commit().await
        }
    }
}
