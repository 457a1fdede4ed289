//! The admin API (Synapse-compatible paths where tooling expects them).

pub mod destinations;
pub mod devices;
pub mod log_level;
pub mod media;
pub mod notices;
mod params;
pub mod query;
pub mod register;
pub mod registration_tokens;
pub mod reports;
pub mod rooms;
pub mod user_media;
pub mod users;

use axum::{
    extract::FromRequestParts,
    routing::{get, post, put},
    Router,
};

use crate::{
    error::MatrixError,
    ruma_wrapper::{authenticate, AuthNeed, AuthUser},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    let router = Router::new()
        .route(
            "/_synapse/admin/v1/register",
            get(register::nonce).post(register::register),
        )
        .route("/_synapse/admin/v1/registration_tokens", get(registration_tokens::list))
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(registration_tokens::create),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(registration_tokens::get)
                .put(registration_tokens::update)
                .delete(registration_tokens::delete),
        );
    rooms_media_federation(router)
}

/// Rooms, media, federation destinations and background updates.
fn rooms_media_federation(router: Router<AppState>) -> Router<AppState> {
    use axum::routing::delete;
    router
        .route("/_synapse/admin/v1/rooms", get(rooms::list))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(rooms::details))
        .route("/_synapse/admin/v1/rooms/{room_id}/members", get(rooms::members))
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(rooms::room_state))
        .route("/_synapse/admin/v1/rooms/{room_id}/messages", get(rooms::messages))
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/timestamp_to_event",
            get(rooms::timestamp_to_event),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/forward_extremities",
            get(rooms::forward_extremities).delete(rooms::delete_forward_extremities),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/block",
            get(rooms::get_block).put(rooms::set_block),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            post(rooms::make_room_admin),
        )
        .route("/_synapse/admin/v2/rooms/{room_id}", delete(rooms::delete))
        .route(
            "/_synapse/admin/v2/rooms/{room_id}/delete_status",
            get(rooms::delete_status_of_room),
        )
        .route(
            "/_synapse/admin/v2/rooms/delete_status/{delete_id}",
            get(rooms::delete_status),
        )
        .route("/_synapse/admin/v1/room/{room_id}/media", get(media::room_media))
        .route(
            "/_synapse/admin/v1/room/{room_id}/media/quarantine",
            post(media::quarantine_room),
        )
        .route(
            "/_synapse/admin/v1/media/quarantine/{server}/{media_id}",
            post(media::quarantine),
        )
        .route(
            "/_synapse/admin/v1/media/unquarantine/{server}/{media_id}",
            post(media::unquarantine),
        )
        .route("/_synapse/admin/v1/media/protect/{media_id}", post(media::protect))
        .route("/_synapse/admin/v1/media/unprotect/{media_id}", post(media::unprotect))
        .route("/_synapse/admin/v1/media/delete", post(media::delete_by_age))
        .route(
            "/_synapse/admin/v1/media/{server}/{media_id}",
            get(media::info).delete(media::delete),
        )
        .route("/_synapse/admin/v1/purge_media_cache", post(media::purge_media_cache))
        .route("/_synapse/admin/v1/statistics/users/media", get(media::user_statistics))
        .route("/_synapse/admin/v1/federation/destinations", get(destinations::list))
        .route(
            "/_synapse/admin/v1/federation/destinations/{destination}",
            get(destinations::get),
        )
        .route(
            "/_synapse/admin/v1/federation/destinations/{destination}/rooms",
            get(destinations::rooms),
        )
        .route(
            "/_synapse/admin/v1/federation/destinations/{destination}/reset_connection",
            post(destinations::reset_connection),
        )
        .route(
            "/_synapse/admin/v1/background_updates/status",
            get(destinations::background_updates),
        )
        .merge(user_routes())
}

/// Users, their devices, sessions and media; server notices; event reports.
fn user_routes() -> Router<AppState> {
    const V1: &str = "/_synapse/admin/v1";
    const USER_V1: &str = "/_synapse/admin/v1/users/{user_id}";
    const USER_V2: &str = "/_synapse/admin/v2/users/{user_id}";
    Router::new()
        .route(&format!("{V1}/server_version"), get(users::server_version))
        .route("/_synapse/admin/v2/users", get(users::list_v2))
        .route("/_synapse/admin/v3/users", get(users::list_v3))
        .route(USER_V2, get(users::query).put(users::create_or_modify))
        .route(&format!("{V1}/reset_password/{{user_id}}"), post(users::reset_password))
        .route(&format!("{V1}/whois/{{user_id}}"), get(users::whois))
        .route(&format!("{V1}/deactivate/{{user_id}}"), post(users::deactivate))
        .route(&format!("{V1}/suspend/{{user_id}}"), put(users::suspend))
        .route(&format!("{V1}/username_available"), get(users::username_available))
        .route(&format!("{USER_V1}/joined_rooms"), get(users::joined_rooms))
        .route(&format!("{USER_V1}/memberships"), get(users::memberships))
        .route(&format!("{USER_V1}/accountdata"), get(users::account_data))
        .route(&format!("{USER_V1}/pushers"), get(users::pushers))
        .route(
            &format!("{USER_V1}/shadow_ban"),
            post(users::shadow_ban).delete(users::unshadow_ban),
        )
        .route(
            &format!("{USER_V1}/override_ratelimit"),
            get(users::get_ratelimit)
                .post(users::set_ratelimit)
                .delete(users::delete_ratelimit),
        )
        .route(&format!("{USER_V1}/login"), post(users::login_as))
        .route(
            &format!("{USER_V1}/media"),
            get(user_media::list).delete(user_media::delete),
        )
        .route(&format!("{USER_V2}/devices"), get(devices::list))
        .route(
            &format!("{USER_V2}/devices/{{device_id}}"),
            get(devices::get).put(devices::update).delete(devices::delete),
        )
        .route(&format!("{USER_V2}/delete_devices"), post(devices::delete_many))
        .route(&format!("{V1}/send_server_notice"), post(notices::send))
        .route(&format!("{V1}/send_server_notice/{{txn_id}}"), put(notices::send_txn))
        .route(&format!("{V1}/event_reports"), get(reports::list))
        .route(
            &format!("{V1}/event_reports/{{report_id}}"),
            get(reports::get).delete(reports::delete),
        )
        .route("/_weft/admin/v1/log_level", get(log_level::get).put(log_level::set))
}

/// An authenticated server admin.
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = authenticate(state, parts, AuthNeed::Required)
            .await?
            .ok_or_else(|| MatrixError::missing_token("Missing access token"))?;
        if !user.is_admin {
            return Err(MatrixError::forbidden("You are not a server admin"));
        }
        Ok(Admin(user))
    }
}
