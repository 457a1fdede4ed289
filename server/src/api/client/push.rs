//! Push rules (`/pushrules/...`), pushers (`/pushers`, `/pushers/set`) and `/notifications`.

use axum::{
    http::StatusCode,
    routing::{any, get},
    Router,
};
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
        get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule, set_pushrule_actions,
        set_pushrule_enabled, PushRule, Pusher,
    },
    push::Action,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
};
use weft_core::push::{notifications, pushers, rules};

use crate::{
    api::client::legacy::Authed,
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_matrix/client/r0/pushrules/{*rest}", any(malformed_path))
        .route("/_matrix/client/v3/pushrules/{*rest}", any(malformed_path))
        .route(
            "/_matrix/client/r0/pushrules/global/{kind}/",
            get(get_kind).fallback(malformed_path),
        )
        .route(
            "/_matrix/client/v3/pushrules/global/{kind}/",
            get(get_kind).fallback(malformed_path),
        )
        .ruma(get_all)
        .ruma(get_global)
        .ruma(get_rule)
        .ruma(set_rule)
        .ruma(delete_rule)
        .ruma(get_enabled)
        .ruma(set_enabled)
        .ruma(get_actions)
        .ruma(set_actions)
        .ruma(get_pushers_list)
        .ruma(set_pusher_handler)
        .ruma(get_notifications_list)
}

/// A path under `/pushrules/` that no endpoint matches (no or an unknown scope, kind or
/// attribute, an empty rule ID, one with a slash) is a malformed request for a rule, 400 as
/// Synapse answers, rather than an unknown endpoint.
async fn malformed_path() -> MatrixError {
    MatrixError::unrecognized("Malformed push rule path").with_status(StatusCode::BAD_REQUEST)
}

async fn get_all(
    state: AppState,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<get_pushrules_all::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    Ok(get_pushrules_all::v3::Response::new(
        rules::load(&mut conn, &user.user_id).await?,
    ))
}

async fn get_global(
    state: AppState,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    let user = req.sender()?;
    let mut conn = state.db.conn().await?;
    Ok(get_pushrules_global_scope::v3::Response::new(
        rules::load(&mut conn, &user.user_id).await?,
    ))
}

/// # `GET /_matrix/client/v3/pushrules/global/{kind}/`
///
/// The rules of one kind, as an array (older spec versions had this endpoint; Synapse and
/// clients written for it still use it).
async fn get_kind(
    axum::extract::State(state): axum::extract::State<AppState>,
    Authed(user): Authed,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    if !["override", "content", "room", "sender", "underride"].contains(&kind.as_str()) {
        return Err(malformed_path().await);
    }
    let mut conn = state.db.conn().await?;
    let content = rules::account_data_content(&rules::load(&mut conn, &user.user_id).await?);
    Ok(axum::Json(content["global"][&kind].clone()))
}

async fn get_rule(state: AppState, req: Ruma<get_pushrule::v3::Request>) -> ApiResult<get_pushrule::v3::Response> {
    let user = req.sender()?;
    let rule = PushRule::from(rules::get_rule(&state.db, &user.user_id, &req.kind, &req.rule_id).await?);
    Ok(get_pushrule::v3::Response::new(rule))
}

async fn set_rule(state: AppState, req: Ruma<set_pushrule::v3::Request>) -> ApiResult<set_pushrule::v3::Response> {
    let user = req.sender()?;
    rules::set_rule(
        &state.db,
        &user.user_id,
        req.rule.clone(),
        req.before.as_deref(),
        req.after.as_deref(),
    )
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete_rule(
    state: AppState,
    req: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<delete_pushrule::v3::Response> {
    let user = req.sender()?;
    rules::delete_rule(&state.db, &user.user_id, &req.kind, &req.rule_id).await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn get_enabled(
    state: AppState,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let user = req.sender()?;
    let enabled = rules::get_rule(&state.db, &user.user_id, &req.kind, &req.rule_id)
        .await?
        .enabled();
    Ok(get_pushrule_enabled::v3::Response::new(enabled))
}

async fn set_enabled(
    state: AppState,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    let user = req.sender()?;
    rules::set_enabled(&state.db, &user.user_id, &req.kind, &req.rule_id, req.enabled).await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn get_actions(
    state: AppState,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let user = req.sender()?;
    let actions = rules::get_rule(&state.db, &user.user_id, &req.kind, &req.rule_id)
        .await?
        .actions()
        .to_vec();
    Ok(get_pushrule_actions::v3::Response::new(actions))
}

async fn set_actions(
    state: AppState,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    let user = req.sender()?;
    rules::set_actions(&state.db, &user.user_id, &req.kind, &req.rule_id, req.actions.clone()).await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

async fn get_pushers_list(
    state: AppState,
    req: Ruma<get_pushers::v3::Request>,
) -> ApiResult<get_pushers::v3::Response> {
    let user = req.sender()?;
    let list = pushers::list(&state.db, user.user_id.as_str()).await?;
    // Stored pushers were validated by ruma's type when set; one that no longer parses is
    // left out rather than failing the whole list.
    let parsed: Vec<Pusher> = list
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    Ok(get_pushers::v3::Response::new(parsed))
}

async fn set_pusher_handler(
    state: AppState,
    req: Ruma<set_pusher::v3::Request>,
) -> ApiResult<set_pusher::v3::Response> {
    let user = req.sender()?;
    match &req.action {
        set_pusher::v3::PusherAction::Post(post) => {
            // Store what the client sent (ruma already checked its shape), so fields ruma does
            // not model survive.
            let body = req
                .json_body
                .clone()
                .ok_or_else(|| MatrixError::bad_json("Missing pusher"))?;
            pushers::set(
                &state.db,
                user.user_id.as_str(),
                user.device_id.as_str(),
                body,
                post.append,
            )
            .await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            pushers::delete(&state.db, user.user_id.as_str(), &ids.app_id, &ids.pushkey).await?;
        }
        _ => return Err(MatrixError::invalid_param("Unsupported pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}

const DEFAULT_NOTIFICATIONS_LIMIT: u64 = 20;
const MAX_NOTIFICATIONS_LIMIT: u64 = 100;

async fn get_notifications_list(
    state: AppState,
    req: Ruma<get_notifications::v3::Request>,
) -> ApiResult<get_notifications::v3::Response> {
    let user = req.sender()?;
    let query = notifications::Query {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
        from: req.from.as_deref(),
        limit: req
            .limit
            .map(u64::from)
            .unwrap_or(DEFAULT_NOTIFICATIONS_LIMIT)
            .clamp(1, MAX_NOTIFICATIONS_LIMIT) as usize,
        only_highlight: req.only.as_deref().is_some_and(|o| o.contains("highlight")),
    };
    let page = notifications::list(&state.core, &query).await?;
    let mut response =
        get_notifications::v3::Response::new(page.notifications.into_iter().filter_map(to_ruma).collect());
    response.next_token = page.next_token;
    Ok(response)
}

fn to_ruma(n: notifications::Notification) -> Option<get_notifications::v3::Notification> {
    let actions: Vec<Action> = serde_json::from_value(n.actions).ok()?;
    let event = Raw::from_json_string(n.event.to_string()).ok()?;
    let room_id = OwnedRoomId::try_from(n.room_id).ok()?;
    let ts = MilliSecondsSinceUnixEpoch(UInt::try_from(n.ts.max(0)).ok()?);
    Some(get_notifications::v3::Notification::new(
        actions, event, n.read, room_id, ts,
    ))
}
