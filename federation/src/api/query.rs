//! `/_matrix/federation/v1/query/...`: what a room alias of this server names, and the
//! profiles of this server's users.

use axum::Router;
use ruma::{
    api::federation::query::{get_profile_information, get_room_information},
    profile::ProfileFieldName,
    OwnedRoomId, OwnedServerName,
};
use serde_json::Value;
use weft_core::{rooms::for_servers, storage::users};
use weft_http::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

use super::origin;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(directory).ruma(profile)
}

/// # `GET /_matrix/federation/v1/query/directory`
async fn directory(
    state: AppState,
    req: Ruma<get_room_information::v1::Request>,
) -> ApiResult<get_room_information::v1::Response> {
    origin(&req)?;
    let (room_id, servers) = for_servers::room_alias(&state.core, &req.room_alias).await?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::unknown(format!("stored room ID: {e}")))?;
    let servers = servers
        .into_iter()
        .filter_map(|s| OwnedServerName::try_from(s).ok())
        .collect();
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

/// # `GET /_matrix/federation/v1/query/profile`
///
/// A local user's display name and avatar, or the one `field` asked for; other fields are
/// not kept here, so asking for one answers an empty profile. Unknown, deactivated and
/// other servers' users are M_NOT_FOUND, as the client API's profile answers.
async fn profile(
    state: AppState,
    req: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<get_profile_information::v1::Response> {
    origin(&req)?;
    let not_found = || MatrixError::not_found("Profile not found");
    if !state.core.is_local(&req.user_id) {
        return Err(not_found());
    }
    let user = match users::get(&state.db, req.user_id.as_str()).await? {
        Some(user) if !user.deactivated => user,
        _ => return Err(not_found()),
    };
    let wanted = |field: ProfileFieldName| req.field.as_ref().is_none_or(|f| *f == field);
    let mut response = get_profile_information::v1::Response::new();
    if let (true, Some(name)) = (wanted(ProfileFieldName::DisplayName), user.displayname) {
        response.set("displayname".into(), Value::String(name));
    }
    if let (true, Some(url)) = (wanted(ProfileFieldName::AvatarUrl), user.avatar_url) {
        response.set("avatar_url".into(), Value::String(url));
    }
    Ok(response)
}
