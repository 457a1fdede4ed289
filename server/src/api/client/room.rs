//! `/createRoom` and `/joined_rooms`.

use ruma::{
    api::client::{
        membership::joined_rooms,
        room::{create_room, Visibility},
    },
    OwnedRoomId, RoomVersionId,
};
use serde_json::{Map, Value};
use weft_core::{
    events::builder::EventTemplate,
    rooms::create::{self, CreateRoom, Preset},
    storage::rooms,
};

use super::capabilities::{supported_room_versions, DEFAULT_ROOM_VERSION};
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

pub async fn create_room(state: AppState, req: Ruma<create_room::v3::Request>) -> ApiResult<create_room::v3::Response> {
    let user = req.sender()?;
    user.may_write()?;
    let body = req.json_body.clone().unwrap_or_default();
    let version = req.room_version.clone().unwrap_or(DEFAULT_ROOM_VERSION);
    if !supported_room_versions().contains(&version) {
        return Err(MatrixError::unsupported_room_version(format!(
            "Room version {version} is not supported"
        )));
    }
    let preset = match body["preset"].as_str() {
        Some("public_chat") => Preset::PublicChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("private_chat") => Preset::PrivateChat,
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown preset {other}"))),
        None if req.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let creation_content = object_field(&body, "creation_content")?;
    // The server sets these itself.
    let mut creation_content = creation_content.unwrap_or_default();
    creation_content.remove("room_version");
    if version != RoomVersionId::V12 {
        creation_content.remove("additional_creators");
    }
    let power_level_override = object_field(&body, "power_level_content_override")?;
    let mut initial_state = Vec::new();
    for ev in body["initial_state"].as_array().into_iter().flatten() {
        let (Some(kind), Some(content)) = (ev["type"].as_str(), ev.get("content").filter(|c| c.is_object())) else {
            return Err(MatrixError::bad_json(
                "initial_state entries need a type and an object content",
            ));
        };
        if kind == "m.room.create" || kind == "m.room.member" {
            return Err(MatrixError::bad_json(format!(
                "{kind} cannot be set through initial_state"
            )));
        }
        let key = ev["state_key"].as_str().unwrap_or("");
        initial_state.push(EventTemplate::state(kind, key, content.clone()));
    }
    let alias = match &req.room_alias_name {
        Some(local) => {
            if local.is_empty() || local.contains(':') || local.contains(char::is_whitespace) {
                return Err(MatrixError::invalid_param("room_alias_name must be a plain localpart"));
            }
            let alias = format!("#{local}:{}", state.config.server_name);
            if ruma::RoomAliasId::parse(&alias).is_err() {
                return Err(MatrixError::invalid_param("room_alias_name is not valid"));
            }
            Some(alias)
        }
        None => None,
    };
    for invitee in &req.invite {
        if state.core.is_local(invitee)
            && weft_core::storage::users::get(&state.db, invitee.as_str())
                .await?
                .is_none()
        {
            return Err(MatrixError::not_found(format!("Unknown user {invitee}")));
        }
    }
    // Remote invitees need federation; without it nothing is created.
    let remote_invitees: Vec<_> = req.invite.iter().filter(|i| !state.core.is_local(i)).collect();
    let federation = match remote_invitees.is_empty() {
        true => None,
        false => Some(weft_federation::of(&state)?),
    };
    let created = create::create_room(
        &state.core,
        &user.user_id,
        CreateRoom {
            version,
            preset,
            creation_content,
            power_level_override,
            name: req.name.clone(),
            topic: req.topic.clone(),
            alias,
            // A shadow-banned user's invites reach no one.
            invite: if user.shadow_banned {
                Vec::new()
            } else {
                req.invite.clone()
            },
            is_direct: req.is_direct,
            initial_state,
            public: req.visibility == Visibility::Public,
        },
    )
    .await?;
    let room_id = OwnedRoomId::try_from(created.room_id).map_err(|_| MatrixError::unknown("Invalid room ID"))?;
    // Other servers' users are invited through their servers now that the room exists. One
    // that cannot be reached does not undo the room: its creator can invite again.
    if let Some(fed) = federation {
        for invitee in remote_invitees {
            let invited =
                weft_federation::invite::invite_remote(fed, &room_id, &user.user_id, invitee, None, req.is_direct)
                    .await;
            if let Err(e) = invited {
                tracing::warn!(%room_id, %invitee, "the invite at the room's creation failed: {e:?}");
            }
        }
    }
    Ok(create_room::v3::Response::new(room_id))
}

fn object_field(body: &Value, key: &str) -> ApiResult<Option<Map<String, Value>>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(MatrixError::bad_json(format!("{key} must be an object"))),
    }
}

pub async fn joined_rooms(
    state: AppState,
    req: Ruma<joined_rooms::v3::Request>,
) -> ApiResult<joined_rooms::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    let joined = rooms::rooms_of_user(&mut conn, user.user_id.as_str(), "join")
        .await
        .map_err(MatrixError::from)?;
    Ok(joined_rooms::v3::Response::new(
        joined
            .into_iter()
            .filter_map(|m| OwnedRoomId::try_from(m.room_id).ok())
            .collect(),
    ))
}
