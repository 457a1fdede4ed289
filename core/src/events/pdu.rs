//! A PDU in the federation format, parsed once, with the fields the graph needs.

use ruma::{
    canonical_json::{redact, CanonicalJsonObject, CanonicalJsonValue, RedactedBecause},
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomIdFormatVersion, RoomVersionRules},
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{value::RawValue as RawJsonValue, Value};

use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room, also for v12 create events whose JSON has no `room_id`.
    pub room_id: OwnedRoomId,
    room_id_field: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Box<RawJsonValue>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub depth: i64,
    pub rejected: bool,
    /// The signed PDU exactly as it travels over federation.
    pub json: CanonicalJsonObject,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadJson(msg.into())
}

/// Reads an event ID list in either reference format (`["$a"]` or `[["$a", {hashes}]]`).
fn event_refs(json: &CanonicalJsonObject, key: &str) -> Result<Vec<OwnedEventId>> {
    let Some(CanonicalJsonValue::Array(items)) = json.get(key) else {
        return Err(bad(format!("{key} must be an array")));
    };
    items
        .iter()
        .map(|item| {
            let id = match item {
                CanonicalJsonValue::String(s) => s.as_str(),
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(s)) => s.as_str(),
                    _ => return Err(bad(format!("{key} has a malformed entry"))),
                },
                _ => return Err(bad(format!("{key} has a malformed entry"))),
            };
            EventId::parse(id).map_err(|_| bad(format!("{key} has an invalid event ID")))
        })
        .collect()
}

fn string_field<'a>(json: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match json.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

impl Pdu {
    /// The event ID of a PDU: its reference hash (v3+) or the `event_id` field (v1, v2).
    pub fn compute_event_id(json: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
        match rules.event_id_format {
            EventIdFormatVersion::V1 => string_field(json, "event_id")
                .and_then(|id| EventId::parse(id).ok())
                .ok_or_else(|| bad("event_id is missing or invalid")),
            _ => {
                let hash = ruma::signatures::reference_hash(json, rules).map_err(|e| match e {
                    ruma::signatures::JsonError::PduTooLarge => Error::TooLarge("PDU exceeds 65536 bytes".into()),
                    other => bad(other.to_string()),
                })?;
                EventId::parse(format!("${hash}")).map_err(|_| bad("bad reference hash"))
            }
        }
    }

    /// Parses a PDU whose ID is known (computed with `compute_event_id`).
    pub fn from_json(event_id: OwnedEventId, json: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<Pdu> {
        let kind = string_field(&json, "type").ok_or_else(|| bad("type is missing"))?;
        let kind = TimelineEventType::from(kind);
        let sender = string_field(&json, "sender")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| bad("sender is missing or invalid"))?;
        let room_id_field = match string_field(&json, "room_id") {
            Some(r) => Some(RoomId::parse(r).map_err(|_| bad("room_id is invalid"))?),
            None => None,
        };
        let is_create = kind == TimelineEventType::RoomCreate;
        let room_id = match (&room_id_field, rules.room_id_format, is_create) {
            (_, RoomIdFormatVersion::V2, true) => {
                RoomId::parse(format!("!{}", &event_id.as_str()[1..])).map_err(|_| bad("bad room ID"))?
            }
            (Some(r), _, _) => r.clone(),
            (None, _, _) => return Err(bad("room_id is missing")),
        };
        let state_key = string_field(&json, "state_key").map(str::to_owned);
        let content = match json.get("content") {
            Some(c @ CanonicalJsonValue::Object(_)) => {
                serde_json::value::to_raw_value(c).map_err(|e| bad(e.to_string()))?
            }
            _ => return Err(bad("content must be an object")),
        };
        let redacts = match string_field(&json, "redacts") {
            Some(r) => Some(r.to_owned()),
            None if kind == TimelineEventType::RoomRedaction => serde_json::from_str::<Value>(content.get())
                .ok()
                .and_then(|c| c.get("redacts").and_then(|r| r.as_str()).map(str::to_owned)),
            None => None,
        }
        .and_then(|r| EventId::parse(r).ok());
        let origin_server_ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => MilliSecondsSinceUnixEpoch(
                UInt::try_from(i64::from(*i)).map_err(|_| bad("origin_server_ts is negative"))?,
            ),
            _ => return Err(bad("origin_server_ts is missing")),
        };
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => return Err(bad("depth is missing")),
        };
        Ok(Pdu {
            prev_events: event_refs(&json, "prev_events")?,
            auth_events: event_refs(&json, "auth_events")?,
            event_id,
            room_id,
            room_id_field,
            sender,
            kind,
            state_key,
            content,
            redacts,
            origin_server_ts,
            depth,
            rejected: false,
            json,
        })
    }

    /// Parses a stored PDU.
    pub fn from_stored(event_id: &str, json: &str, rules: &RoomVersionRules) -> Result<Pdu> {
        let object: CanonicalJsonObject =
            serde_json::from_str(json).map_err(|e| Error::internal(format!("stored event {event_id}: {e}")))?;
        let event_id = EventId::parse(event_id).map_err(Error::internal)?;
        Pdu::from_json(event_id, object, rules)
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Default::default()))
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The event as clients see it (without `unsigned`, which the caller adds). A redacted
    /// event is served with its content redacted per the room version.
    pub fn client_json(&self, rules: &RoomVersionRules, redacted_because: Option<&Value>) -> Value {
        let mut object = self.json.clone();
        if let Some(because) = redacted_because {
            let because_obj: Option<CanonicalJsonObject> = serde_json::from_value(because.clone()).ok();
            if let Ok(redacted) = redact(
                object.clone(),
                &rules.redaction,
                because_obj.map(RedactedBecause::from_json),
            ) {
                object = redacted;
            }
        }
        let mut out = serde_json::Map::new();
        out.insert("event_id".into(), Value::String(self.event_id.to_string()));
        out.insert("room_id".into(), Value::String(self.room_id.to_string()));
        for key in ["type", "sender", "state_key", "content", "origin_server_ts", "redacts"] {
            if let Some(v) = object.get(key) {
                out.insert(key.into(), serde_json::to_value(v).unwrap_or(Value::Null));
            }
        }
        if let Some(CanonicalJsonValue::Object(unsigned)) = object.get("unsigned") {
            if let Some(because) = unsigned.get("redacted_because") {
                out.insert(
                    "unsigned".into(),
                    serde_json::json!({ "redacted_because": serde_json::to_value(because).unwrap_or(Value::Null) }),
                );
            }
        }
        Value::Object(out)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_field.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
