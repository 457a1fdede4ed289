//! `/profile/{userId}` with `displayname` and `avatar_url`.

use ruma::{
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
    OwnedMxcUri, UserId,
};
use serde_json::Value;
use weft_core::storage::users::{self, User};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{AuthUser, Ruma},
    state::AppState,
};

/// What a profile shows.
struct Profile {
    displayname: Option<String>,
    avatar_url: Option<String>,
}

/// A user's profile: this server's users from the database, others' asked of their server.
async fn load(state: &AppState, user_id: &UserId) -> ApiResult<Profile> {
    if !state.core.is_local(user_id) {
        let answer = weft_federation::query::profile(weft_federation::of(state)?, user_id, None).await?;
        let field = |name: &str| answer.data.get(name).and_then(Value::as_str).map(str::to_owned);
        return Ok(Profile {
            displayname: field("displayname"),
            avatar_url: field("avatar_url"),
        });
    }
    let mut found = users::get(&state.db, user_id.as_str()).await?;
    // A user an appservice's namespace holds may exist once it is asked (it registers it).
    if found.is_none() && weft_core::appservice::query::user_exists(&state.core, user_id.as_str()).await {
        found = users::get(&state.db, user_id.as_str()).await?;
    }
    match found {
        Some(User {
            deactivated: false,
            displayname,
            avatar_url,
            ..
        }) => Ok(Profile {
            displayname,
            avatar_url,
        }),
        _ => Err(MatrixError::not_found("Profile not found")),
    }
}

fn check_own(sender: &AuthUser, target: &UserId) -> ApiResult<()> {
    if sender.user_id != target {
        return Err(MatrixError::forbidden("You cannot change another user's profile"));
    }
    sender.may_write()
}

pub async fn get_profile(state: AppState, req: Ruma<get_profile::v3::Request>) -> ApiResult<get_profile::v3::Response> {
    let user = load(&state, &req.user_id).await?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = user.displayname {
        response.data.set("displayname".into(), Value::String(name));
    }
    if let Some(url) = user.avatar_url {
        response.data.set("avatar_url".into(), Value::String(url));
    }
    Ok(response)
}

pub async fn get_displayname(
    state: AppState,
    req: Ruma<get_display_name::v3::Request>,
) -> ApiResult<get_display_name::v3::Response> {
    let user = load(&state, &req.user_id).await?;
    Ok(get_display_name::v3::Response::new(user.displayname))
}

pub async fn set_displayname(
    state: AppState,
    req: Ruma<set_display_name::v3::Request>,
) -> ApiResult<set_display_name::v3::Response> {
    check_own(req.sender()?, &req.user_id)?;
    let name = req.displayname.as_deref().filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.len() > 256) {
        return Err(MatrixError::invalid_param("Display name is longer than 256 bytes"));
    }
    let mut tx = state.db.write().await?;
    users::set_displayname(&mut tx, req.user_id.as_str(), name).await?;
    tx.commit().await?;
    weft_core::rooms::membership::refresh_profile(&state.core, &req.user_id).await?;
    Ok(set_display_name::v3::Response::new())
}

pub async fn get_avatar_url(
    state: AppState,
    req: Ruma<get_avatar_url::v3::Request>,
) -> ApiResult<get_avatar_url::v3::Response> {
    let user = load(&state, &req.user_id).await?;
    Ok(get_avatar_url::v3::Response::new(
        user.avatar_url.map(OwnedMxcUri::from),
    ))
}

pub async fn set_avatar_url(
    state: AppState,
    req: Ruma<set_avatar_url::v3::Request>,
) -> ApiResult<set_avatar_url::v3::Response> {
    check_own(req.sender()?, &req.user_id)?;
    let url = req.avatar_url.as_ref().map(|u| u.as_str()).filter(|u| !u.is_empty());
    if let Some(url) = url {
        if !url.starts_with("mxc://") {
            return Err(MatrixError::invalid_param("avatar_url must be an mxc:// URI"));
        }
    }
    let mut tx = state.db.write().await?;
    users::set_avatar_url(&mut tx, req.user_id.as_str(), url).await?;
    tx.commit().await?;
    weft_core::rooms::membership::refresh_profile(&state.core, &req.user_id).await?;
    Ok(set_avatar_url::v3::Response::new())
}
