//! The admin API (Synapse-compatible paths where tooling expects them).

pub mod destinations;
pub mod media;
pub mod query;
pub mod register;
pub mod registration_tokens;
pub mod rooms;

use axum::{
    extract::FromRequestParts,
    routing::{get, post},
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
