//! weft-federation: the Server-Server API, inbound and outbound.
//!
//! It depends on weft-core and the shared HTTP glue (weft-http) only: inbound PDUs go through
//! core's one event pipeline (`rooms::writer`), outbound transactions tail core's event
//! stream. Nothing here knows the Client-Server API. Endpoints are found by the area of their
//! path: `api/<area>.rs`.

pub mod api;
pub mod sender;

use axum::Router;
use weft_http::state::AppState;

/// The key server (`/_matrix/key/...`), for a listener with the `keys` API.
pub fn keys_router() -> Router<AppState> {
    api::keys::routes(Router::new())
}

/// The Server-Server API (`/_matrix/federation/...`), for a listener with the `federation`
/// API; it serves the key server too, as servers expect on their federation port.
pub fn router() -> Router<AppState> {
    let router = api::version::routes(keys_router());
    api::openid::routes(router)
}
