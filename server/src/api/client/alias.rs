//! Room aliases: `/directory/room/{roomAlias}` (create, resolve, delete) and
//! `/rooms/{roomId}/aliases`.

use axum::{http::StatusCode, Router};
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        room::aliases,
    },
    OwnedRoomAliasId,
};
use weft_core::rooms::aliases::{self as core_aliases, Actor};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(create).ruma(resolve).ruma(delete).ruma(list_for_room)
}

fn actor(user: &AuthUser) -> Actor<'_> {
    Actor {
        user: &user.user_id,
        is_admin: user.is_admin,
    }
}

pub async fn create(state: AppState, req: Ruma<create_alias::v3::Request>) -> ApiResult<create_alias::v3::Response> {
    let user = req.sender()?;
    if user.is_guest {
        return Err(MatrixError::guest_access_forbidden(
            "Guests may not create room aliases",
        ));
    }
    if !core_aliases::create(&state.core, &req.room_alias, req.room_id.as_str(), actor(user)).await? {
        // The spec's answer for a taken alias: 409 with M_UNKNOWN.
        return Err(
            MatrixError::unknown(format!("Room alias {} already exists", req.room_alias))
                .with_status(StatusCode::CONFLICT),
        );
    }
    Ok(create_alias::v3::Response::new())
}

/// Another server's alias is asked of that server; a local one answers the servers in the
/// room to join through, as other servers are answered.
pub async fn resolve(state: AppState, req: Ruma<get_alias::v3::Request>) -> ApiResult<get_alias::v3::Response> {
    if req.room_alias.server_name() != state.core.server_name {
        let (room_id, servers) =
            weft_federation::query::room_alias(weft_federation::of(&state)?, &req.room_alias).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    let found = match weft_core::rooms::for_servers::room_alias(&state.core, &req.room_alias).await {
        // An alias an appservice's namespace holds may exist once it is asked (it creates the
        // room, a bridge's portal, as it answers).
        Err(weft_core::Error::NotFound(_))
            if weft_core::appservice::query::alias_exists(&state.core, req.room_alias.as_str()).await =>
        {
            weft_core::rooms::for_servers::room_alias(&state.core, &req.room_alias).await
        }
        other => other,
    };
    let (room_id, servers) = found?;
    let room_id = room_id
        .try_into()
        .map_err(|_| MatrixError::unknown("Stored room ID is invalid"))?;
    let servers = servers.into_iter().filter_map(|s| s.try_into().ok()).collect();
    Ok(get_alias::v3::Response::new(room_id, servers))
}

pub async fn delete(state: AppState, req: Ruma<delete_alias::v3::Request>) -> ApiResult<delete_alias::v3::Response> {
    let user = req.sender()?;
    core_aliases::delete(&state.core, &req.room_alias, actor(user)).await?;
    Ok(delete_alias::v3::Response::new())
}

pub async fn list_for_room(state: AppState, req: Ruma<aliases::v3::Request>) -> ApiResult<aliases::v3::Response> {
    let user = req.sender()?;
    let list = core_aliases::of_room(&state.core, req.room_id.as_str(), actor(user)).await?;
    // Stored aliases were validated on the way in; skip any that no longer parse.
    let list = list
        .into_iter()
        .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(list))
}
