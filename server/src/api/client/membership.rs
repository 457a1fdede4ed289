//! Joining, inviting, leaving, kicking, banning, unbanning, knocking, forgetting.

use ruma::{
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias, kick_user, leave_room,
            unban_user,
        },
    },
    OwnedRoomId, OwnedServerName, RoomOrAliasId,
};
use weft_core::{rooms::membership, storage::rooms};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

/// Resolves a room ID or a local alias to a room ID.
pub async fn resolve_room(state: &AppState, id: &RoomOrAliasId) -> ApiResult<OwnedRoomId> {
    resolve_room_with_servers(state, id).await.map(|(room_id, _)| room_id)
}

/// Resolves a room ID or an alias (another server's through federation) to a room ID, with
/// the servers the alias names to join through.
async fn resolve_room_with_servers(
    state: &AppState,
    id: &RoomOrAliasId,
) -> ApiResult<(OwnedRoomId, Vec<OwnedServerName>)> {
    if let Err(alias) = <&ruma::RoomId>::try_from(id) {
        if alias.server_name() != state.core.server_name {
            return weft_federation::query::room_alias(weft_federation::of(state)?, alias).await;
        }
    }
    Ok((resolve_local(state, id).await?, Vec::new()))
}

async fn resolve_local(state: &AppState, id: &RoomOrAliasId) -> ApiResult<OwnedRoomId> {
    match <&ruma::RoomId>::try_from(id) {
        Ok(room_id) => Ok(room_id.to_owned()),
        Err(alias) => {
            let mut conn = state.db.conn().await?;
            let (room_id, _) = rooms::alias_get(&mut conn, alias.as_str())
                .await?
                .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
            OwnedRoomId::try_from(room_id).map_err(|_| MatrixError::unknown("Invalid stored room ID"))
        }
    }
}

/// Guests may only join rooms whose `m.room.guest_access` is `can_join`.
async fn check_guest_access(state: &AppState, user: &crate::ruma_wrapper::AuthUser, room_id: &str) -> ApiResult<()> {
    if !user.is_guest {
        return Ok(());
    }
    let mut conn = state.db.conn().await?;
    let access = weft_core::rooms::current_state_content(&mut conn, room_id, "m.room.guest_access", "").await?;
    if access.is_some_and(|c| c["guest_access"] == "can_join") {
        Ok(())
    } else {
        Err(MatrixError::guest_access_forbidden("Guests may not join this room"))
    }
}

/// Joins a room: here when this server is in it, else through the servers given, the room ID's
/// own server (rooms before v12 name the server that created them) and those of the user's
/// pending invite.
async fn join(
    state: &AppState,
    user: &crate::ruma_wrapper::AuthUser,
    room_id: &OwnedRoomId,
    mut servers: Vec<OwnedServerName>,
    reason: Option<&str>,
    custom: &serde_json::Map<String, serde_json::Value>,
) -> ApiResult<()> {
    let core = &state.core;
    if !user.is_admin {
        weft_core::admin::rooms::check_not_blocked(core, room_id.as_str()).await?;
    }
    let in_room = {
        let mut conn = state.db.conn().await?;
        rooms::server_in_room(&mut conn, room_id.as_str(), core.server_name.as_str()).await?
    };
    if !in_room {
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
        servers.extend(membership::invite_servers(core, room_id.as_str(), &user.user_id).await?);
        servers.retain(|s| *s != core.server_name);
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| seen.insert(s.clone()));
        if !servers.is_empty() {
            let fed = weft_federation::of(state)?;
            weft_federation::join::join_remote(fed, room_id, &user.user_id, &servers, reason).await?;
            return Ok(());
        }
    }
    check_guest_access(state, user, room_id.as_str()).await?;
    membership::join(core, room_id.as_str(), &user.user_id, reason, custom).await?;
    Ok(())
}

/// The fields of a join's body that are not the endpoint's own: custom content for the
/// member event.
fn custom_content(body: Option<&serde_json::Value>) -> serde_json::Map<String, serde_json::Value> {
    let mut custom = body.and_then(|b| b.as_object()).cloned().unwrap_or_default();
    for own in ["reason", "third_party_signed", "membership"] {
        custom.remove(own);
    }
    custom
}

pub async fn join_by_id(
    state: AppState,
    req: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    let user = req.sender()?;
    user.may_write()?;
    let custom = custom_content(req.json_body.as_ref());
    join(&state, user, &req.room_id, Vec::new(), req.reason.as_deref(), &custom).await?;
    Ok(join_room_by_id::v3::Response::new(req.room_id.clone()))
}

pub async fn join_by_id_or_alias(
    state: AppState,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let user = req.sender()?;
    user.may_write()?;
    let (room_id, mut servers) = resolve_room_with_servers(&state, &req.room_id_or_alias).await?;
    servers.splice(0..0, req.via.iter().cloned());
    let custom = custom_content(req.json_body.as_ref());
    join(&state, user, &room_id, servers, req.reason.as_deref(), &custom).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn invite(state: AppState, req: Ruma<invite_user::v3::Request>) -> ApiResult<invite_user::v3::Response> {
    let user = req.sender()?;
    user.may_write()?;
    if user.shadow_banned {
        // As if sent: the invitee never hears of it.
        return Ok(invite_user::v3::Response::new());
    }
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(MatrixError::unrecognized("Third-party invites are not supported")
            .with_status(http::StatusCode::BAD_REQUEST));
    };
    let is_direct = req.json_body.as_ref().is_some_and(|b| b["is_direct"] == true);
    if !user.is_admin {
        weft_core::admin::rooms::check_not_blocked(&state.core, req.room_id.as_str()).await?;
    }
    if !state.core.is_local(&recipient.user_id) {
        weft_federation::invite::invite_remote(
            weft_federation::of(&state)?,
            &req.room_id,
            &user.user_id,
            &recipient.user_id,
            recipient.reason.as_deref(),
            is_direct,
        )
        .await?;
        return Ok(invite_user::v3::Response::new());
    }
    membership::invite(
        &state.core,
        req.room_id.as_str(),
        &user.user_id,
        &recipient.user_id,
        recipient.reason.as_deref(),
        is_direct,
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

pub async fn leave(state: AppState, req: Ruma<leave_room::v3::Request>) -> ApiResult<leave_room::v3::Response> {
    let user = req.sender()?;
    // An invite to a room this server is not in is rejected through the inviting server.
    if !weft_core::rooms::out_of_band::is_in_room(&state.core, req.room_id.as_str()).await? {
        let servers = membership::invite_servers(&state.core, req.room_id.as_str(), &user.user_id).await?;
        if !servers.is_empty() {
            let fed = weft_federation::of(&state)?;
            weft_federation::invite::reject_remote(fed, &req.room_id, &user.user_id, &servers, req.reason.as_deref())
                .await?;
            return Ok(leave_room::v3::Response::new());
        }
    }
    membership::leave(&state.core, req.room_id.as_str(), &user.user_id, req.reason.as_deref()).await?;
    Ok(leave_room::v3::Response::new())
}

pub async fn kick(state: AppState, req: Ruma<kick_user::v3::Request>) -> ApiResult<kick_user::v3::Response> {
    let user = req.sender()?;
    membership::kick(
        &state.core,
        req.room_id.as_str(),
        &user.user_id,
        &req.user_id,
        req.reason.as_deref(),
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(state: AppState, req: Ruma<ban_user::v3::Request>) -> ApiResult<ban_user::v3::Response> {
    let user = req.sender()?;
    membership::ban(
        &state.core,
        req.room_id.as_str(),
        &user.user_id,
        &req.user_id,
        req.reason.as_deref(),
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(state: AppState, req: Ruma<unban_user::v3::Request>) -> ApiResult<unban_user::v3::Response> {
    let user = req.sender()?;
    membership::unban(
        &state.core,
        req.room_id.as_str(),
        &user.user_id,
        &req.user_id,
        req.reason.as_deref(),
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn forget(state: AppState, req: Ruma<forget_room::v3::Request>) -> ApiResult<forget_room::v3::Response> {
    let user = req.sender()?;
    membership::forget(&state.core, req.room_id.as_str(), &user.user_id).await?;
    Ok(forget_room::v3::Response::new())
}

pub async fn knock(state: AppState, req: Ruma<knock_room::v3::Request>) -> ApiResult<knock_room::v3::Response> {
    let user = req.sender()?;
    let (room_id, mut servers) = resolve_room_with_servers(&state, &req.room_id_or_alias).await?;
    if !user.is_admin {
        weft_core::admin::rooms::check_not_blocked(&state.core, room_id.as_str()).await?;
    }
    if !weft_core::rooms::out_of_band::is_in_room(&state.core, room_id.as_str()).await? {
        servers.splice(0..0, req.via.iter().cloned());
        servers.extend(room_id.server_name().map(ToOwned::to_owned));
        servers.retain(|s| *s != state.core.server_name);
        if !servers.is_empty() {
            let fed = weft_federation::of(&state)?;
            weft_federation::knock::knock_remote(fed, &room_id, &user.user_id, &servers, req.reason.as_deref()).await?;
            return Ok(knock_room::v3::Response::new(room_id));
        }
    }
    membership::knock(&state.core, room_id.as_str(), &user.user_id, req.reason.as_deref()).await?;
    Ok(knock_room::v3::Response::new(room_id))
}
