//! `createRoom`: the initial events of a room, in the spec's order, in one transaction.

use ruma::{OwnedUserId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use crate::{
    events::{
        builder::{self, EventTemplate},
        pipeline, rules_for, Pdu, StateMap,
    },
    storage::{rooms, users},
    util::random_string,
    Core, Error, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

#[derive(Clone, Debug)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub preset: Preset,
    pub creation_content: Map<String, Value>,
    pub power_level_override: Option<Map<String, Value>>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias: Option<String>,
    /// Everyone to invite; only local users' invites are made here (see `create_in_tx`), but
    /// a trusted private chat gives all of them power.
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub initial_state: Vec<EventTemplate>,
    pub public: bool,
}

pub struct Created {
    pub room_id: String,
    pub last_stream_pos: i64,
}

pub async fn create_room(core: &Core, creator: &UserId, req: CreateRoom) -> Result<Created> {
    let profiles = Profiles::read(core, creator, &req).await?;
    let mut tx = core.db.write().await?;
    let (created, sent) = create_in_tx(core, &mut tx, creator, req, profiles, None).await?;
    tx.commit().await?;
    for pdu in &sent {
        super::notify_committed(core, pdu);
    }
    Ok(created)
}

/// The profiles a room's initial member events carry, read before the transaction: never
/// wait for a second pooled connection while holding one.
pub(crate) struct Profiles {
    creator: Option<users::User>,
    invitee_names: Vec<Option<String>>,
}

impl Profiles {
    pub(crate) async fn read(core: &Core, creator: &UserId, req: &CreateRoom) -> Result<Profiles> {
        let profile = users::get(&core.db, creator.as_str()).await?;
        let mut invitee_names = Vec::new();
        for invitee in &req.invite {
            invitee_names.push(
                users::get(&core.db, invitee.as_str())
                    .await?
                    .and_then(|p| p.displayname),
            );
        }
        Ok(Profiles {
            creator: profile,
            invitee_names,
        })
    }
}

/// Creates the room inside `tx` (with the given ID, or a new one; a version whose room IDs are
/// hashes of the create event ignores it) and returns it with the events to announce once
/// `tx` committed.
pub(crate) async fn create_in_tx(
    core: &Core,
    tx: &mut AnyConnection,
    creator: &UserId,
    req: CreateRoom,
    profiles: Profiles,
    room_id: Option<String>,
) -> Result<(Created, Vec<Pdu>)> {
    let rules = rules_for(req.version.as_str())?;
    let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
    let Profiles {
        creator: profile,
        invitee_names,
    } = profiles;
    if let Some(alias) = &req.alias {
        crate::appservice::check_alias_claim(core, alias, creator.as_str())?;
        if rooms::alias_get(tx, alias).await?.is_some() {
            return Err(Error::RoomInUse("Room alias already taken".into()));
        }
    }

    // The create event.
    let mut create_content = req.creation_content.clone();
    create_content.insert("room_version".into(), json!(req.version.as_str()));
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), json!(creator));
    }
    let create = EventTemplate::state("m.room.create", "", Value::Object(create_content));
    let room_id = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        Some(room_id.unwrap_or_else(|| new_room_id(core)))
    };
    // A room has no head before its create event.
    let no_head = rooms::Head::default();
    let create_pdu = builder::build(
        core,
        tx,
        &rules,
        room_id.as_deref(),
        creator,
        &create,
        &no_head,
        &StateMap::new(),
    )
    .await?;
    let room_id = create_pdu.room_id.to_string();
    rooms::insert(tx, &room_id, req.version.as_str(), creator.as_str()).await?;
    rooms::lock(tx, &room_id).await?;
    // The create event's own checks; a content the rules refuse is the request's fault.
    let checked = super::writer::prepare_local(core, tx, &rules, create_pdu)
        .await
        .map_err(|e| match e {
            Error::Forbidden(reason) => Error::BadJson(format!("invalid create event: {reason}")),
            other => other,
        })?;
    let outcome = pipeline::commit(
        core,
        tx,
        &rules,
        checked,
        &no_head,
        pipeline::Write::default(),
        &super::steps::RoomSteps,
    )
    .await?;

    let mut member = json!({ "membership": "join" });
    if let Some(p) = &profile {
        if let Some(name) = &p.displayname {
            member["displayname"] = json!(name);
        }
        if let Some(url) = &p.avatar_url {
            member["avatar_url"] = json!(url);
        }
    }

    let mut templates = vec![EventTemplate::state("m.room.member", creator.as_str(), member)];

    let mut users = Map::new();
    if !privileged_creators {
        users.insert(creator.to_string(), json!(100));
    }
    if req.preset == Preset::TrustedPrivateChat {
        for invitee in &req.invite {
            users.insert(invitee.to_string(), json!(100));
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50,
        "invite": 0,
        "notifications": { "room": 50 },
    });
    if let Some(overrides) = &req.power_level_override {
        for (k, v) in overrides {
            power_levels[k] = v.clone();
        }
    }
    templates.push(EventTemplate::state("m.room.power_levels", "", power_levels));
    if let Some(alias) = &req.alias {
        templates.push(EventTemplate::state(
            "m.room.canonical_alias",
            "",
            json!({ "alias": alias }),
        ));
    }
    // A public room's guest access is `forbidden`, which an absent event means too: like
    // Synapse, the preset sends none (clients and sytest expect a public room's state without it).
    let (join_rule, history, guest) = match req.preset {
        Preset::PublicChat => ("public", "shared", None),
        Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "shared", Some("can_join")),
    };
    templates.push(EventTemplate::state(
        "m.room.join_rules",
        "",
        json!({ "join_rule": join_rule }),
    ));
    templates.push(EventTemplate::state(
        "m.room.history_visibility",
        "",
        json!({ "history_visibility": history }),
    ));
    if let Some(guest) = guest {
        templates.push(EventTemplate::state(
            "m.room.guest_access",
            "",
            json!({ "guest_access": guest }),
        ));
    }
    // initial_state overrides the preset's events of the same type and key.
    for t in &req.initial_state {
        templates.retain(|p| !(p.kind == t.kind && p.state_key == t.state_key && p.kind != "m.room.member"));
        templates.push(t.clone());
    }
    if let Some(name) = &req.name {
        templates.push(EventTemplate::state("m.room.name", "", json!({ "name": name })));
    }
    if let Some(topic) = &req.topic {
        templates.push(EventTemplate::state(
            "m.room.topic",
            "",
            json!({ "topic": topic, "m.topic": [{ "mimetype": "text/plain", "body": topic }] }),
        ));
    }
    // Another server's user is invited through their server (`/invite`) once the room exists:
    // that server must countersign the invite, and an event sent in the room would not reach a
    // server with no one in it.
    for (invitee, name) in req.invite.iter().zip(invitee_names).filter(|(i, _)| core.is_local(i)) {
        let mut content = json!({ "membership": "invite" });
        if req.is_direct {
            content["is_direct"] = json!(true);
        }
        if let Some(name) = name {
            content["displayname"] = json!(name);
        }
        templates.push(EventTemplate::state("m.room.member", invitee.as_str(), content));
    }

    let mut last = outcome.stream_pos.unwrap_or_default();
    let mut head = outcome
        .head
        .ok_or_else(|| Error::Internal("the create event left no head".into()))?;
    let mut sent = Vec::new();
    for t in &templates {
        let (pdu, pos, after) = super::send_in_tx(core, tx, &room_id, creator, t, &head).await?;
        last = pos;
        head = after;
        sent.push(pdu);
    }
    if let Some(alias) = &req.alias {
        rooms::alias_insert(tx, alias, &room_id, creator.as_str()).await?;
    }
    if req.public {
        rooms::set_public(tx, &room_id, true).await?;
    }
    Ok((
        Created {
            room_id,
            last_stream_pos: last,
        },
        sent,
    ))
}

/// A room ID for a version whose room IDs are not hashes of the create event.
pub(crate) fn new_room_id(core: &Core) -> String {
    format!("!{}:{}", random_string(18), core.server_name)
}
