//! Member lists: `GET /rooms/{roomId}/members` and `GET /rooms/{roomId}/joined_members`.

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    api::client::membership::{get_member_events, joined_members},
    OwnedMxcUri, OwnedUserId,
};
use weft_core::{
    rooms::{
        self,
        client_format::{self, Viewer},
        timeline,
    },
    storage::rooms as room_store,
};

use super::context::to_raw;
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(get_members).ruma(get_joined_members)
}

pub async fn get_members(
    state: AppState,
    req: Ruma<get_member_events::v3::Request>,
) -> ApiResult<get_member_events::v3::Response> {
    let user = req.sender()?;
    let core = &state.core;
    let mut conn = state.db.conn().await?;
    let room_state = timeline::member_list_state(
        core,
        &mut conn,
        user.user_id.as_str(),
        req.room_id.as_str(),
        req.at.as_deref(),
    )
    .await?;
    let membership = req.membership.as_ref().map(|m| m.as_str());
    let not_membership = req.not_membership.as_ref().map(|m| m.as_str());
    let list = timeline::member_events(&mut conn, &room_state, membership, not_membership).await?;
    let viewer = Some(Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    });
    Ok(get_member_events::v3::Response::new(to_raw(
        client_format::format(core, &mut conn, &list, viewer).await?,
    )))
}

pub async fn get_joined_members(
    state: AppState,
    req: Ruma<joined_members::v3::Request>,
) -> ApiResult<joined_members::v3::Response> {
    let user = req.sender()?;
    let room_id = req.room_id.as_str();
    let mut conn = state.db.conn().await?;
    rooms::room_rules(&state.core, &mut conn, room_id).await?;
    let own = room_store::membership(&mut conn, room_id, user.user_id.as_str()).await?;
    if own.is_none_or(|m| m.membership != "join") {
        return Err(MatrixError::forbidden("You are not joined to this room"));
    }
    // The membership table keeps each member's display name and avatar from their member event.
    let mut joined = BTreeMap::new();
    for member in room_store::members(&mut conn, room_id, "join").await? {
        let Ok(user_id) = OwnedUserId::try_from(member.user_id) else {
            continue;
        };
        let mut entry = joined_members::v3::RoomMember::new();
        entry.display_name = member.displayname;
        // An avatar that is not an MXC URI is one no client could fetch; leave it out.
        entry.avatar_url = member
            .avatar_url
            .filter(|a| a.starts_with("mxc://"))
            .map(OwnedMxcUri::from);
        joined.insert(user_id, entry);
    }
    Ok(joined_members::v3::Response::new(joined))
}
