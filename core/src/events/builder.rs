//! Builds local PDUs: prev events from the forward extremities, auth events from current
//! state, depth, content hash, signature and event ID per room version.

use std::sync::Arc;

use ruma::{
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    state_res, UserId,
};
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{
    cache::{self, GraphEvent},
    Pdu, StateMap,
};
use crate::{
    storage::rooms::Head,
    util::{now_ms, random_string},
    Core, Error, Result,
};

/// What a local user wants to send.
#[derive(Clone, Debug)]
pub struct EventTemplate {
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub redacts: Option<String>,
}

impl EventTemplate {
    pub fn message(kind: &str, content: Value) -> EventTemplate {
        EventTemplate {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }

    pub fn state(kind: &str, state_key: &str, content: Value) -> EventTemplate {
        EventTemplate {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }
}

/// At most this many forward extremities are referenced by one new event.
const MAX_PREV_EVENTS: usize = 10;

/// Builds and signs a PDU in `room_id` (ignored for a v12 create event, whose room ID is its
/// own hash) on top of the room's `head` (empty for a create event).
pub async fn build(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    room_id: Option<&str>,
    sender: &UserId,
    template: &EventTemplate,
    head: &Head,
    current: &StateMap,
) -> Result<Pdu> {
    let object = unsigned(core, conn, rules, room_id, sender, template, head, current).await?;
    sign(core, rules, object)
}

/// The event `build` makes, before it is hashed and signed: what `make_join` hands to another
/// server, whose user will send it.
#[allow(clippy::too_many_arguments)]
pub async fn unsigned(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    room_id: Option<&str>,
    sender: &UserId,
    template: &EventTemplate,
    head: &Head,
    current: &StateMap,
) -> Result<CanonicalJsonObject> {
    let mut prev_ids = head.extremities.clone();
    prev_ids.truncate(MAX_PREV_EVENTS);
    let prevs = cache::load(&core.db, conn, rules, &prev_ids).await?;
    let depth = prevs.iter().map(|e| e.pdu.depth).max().unwrap_or(0) + 1;

    let content_raw = serde_json::value::to_raw_value(&template.content).map_err(|e| Error::BadJson(e.to_string()))?;
    let auth_types = state_res::auth_types_for_event(
        &TimelineEventType::from(template.kind.as_str()),
        sender,
        template.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(Error::BadJson)?;
    let mut auth_ids: Vec<String> = auth_types
        .into_iter()
        .filter_map(|(t, k)| current.get(&(t.to_string(), k)).cloned())
        .collect();
    auth_ids.sort();
    auth_ids.dedup();
    let auths = cache::load(&core.db, conn, rules, &auth_ids).await?;

    let reference = |known: &[Arc<GraphEvent>], ids: &[String]| -> Value {
        match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => Value::Array(
                ids.iter()
                    .map(|id| {
                        let hash = known
                            .iter()
                            .find(|e| e.pdu.event_id.as_str() == id)
                            .and_then(|e| match e.pdu.json.get("hashes") {
                                Some(CanonicalJsonValue::Object(h)) => match h.get("sha256") {
                                    Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
                                    _ => None,
                                },
                                _ => None,
                            })
                            .unwrap_or_default();
                        json!([id, { "sha256": hash }])
                    })
                    .collect(),
            ),
            _ => json!(ids),
        }
    };

    let mut object = json!({
        "type": template.kind,
        "sender": sender,
        "content": template.content,
        "depth": depth,
        "origin_server_ts": now_ms(),
        "prev_events": reference(&prevs, &prev_ids),
        "auth_events": reference(&auths, &auth_ids),
    });
    let is_create = template.kind == "m.room.create";
    if let Some(room) = room_id.filter(|_| !(is_create && rules.authorization.room_create_event_id_as_room_id)) {
        object["room_id"] = json!(room);
    }
    if let Some(key) = &template.state_key {
        object["state_key"] = json!(key);
    }
    if let Some(redacts) = &template.redacts {
        // Before v11 `redacts` is a top-level key; from v11 it lives in content, and the
        // top-level copy is kept for older clients.
        object["redacts"] = json!(redacts);
        if rules.redaction.content_field_redacts {
            object["content"]["redacts"] = json!(redacts);
        }
    }
    match ruma::canonical_json::to_canonical_value(&object) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::BadJson("event is not an object".into())),
        Err(e) => Err(Error::BadJson(format!("event is not canonical JSON: {e}"))),
    }
}

/// Hashes and signs an event this server sends (built here, or a template another server
/// built for a local user's join), giving it its ID (rooms v1 and v2 name it here).
pub fn sign(core: &Core, rules: &RoomVersionRules, mut object: CanonicalJsonObject) -> Result<Pdu> {
    object.remove("signatures");
    object.remove("hashes");
    object.remove("unsigned");
    if rules.event_id_format == EventIdFormatVersion::V1 {
        object.insert(
            "event_id".into(),
            CanonicalJsonValue::String(format!("${}:{}", random_string(18), core.server_name)),
        );
        object.insert(
            "origin".into(),
            CanonicalJsonValue::String(core.server_name.to_string()),
        );
    } else {
        object.remove("event_id");
    }
    ruma::signatures::hash_and_sign_event(
        core.server_name.as_str(),
        &core.key.keypair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => Error::TooLarge("event exceeds 65536 bytes".into()),
        other => Error::BadJson(other.to_string()),
    })?;
    let event_id = Pdu::compute_event_id(&object, rules)?;
    Pdu::from_json(event_id, object, rules)
}
