//! weft-federation: the Server-Server API, inbound and outbound.
//!
//! It depends on weft-core and the shared HTTP glue (weft-http) only: inbound PDUs go through
//! core's one event pipeline (`rooms::writer`), outbound transactions tail core's event
//! stream. Nothing here knows the Client-Server API. Endpoints are found by the area of their
//! path: `api/<area>.rs`.

pub mod acl;
pub mod api;
pub mod auth;
pub mod backfill;
pub mod client;
pub mod discovery;
pub mod e2ee;
pub mod edu;
pub mod invite;
pub mod join;
pub mod keys;
pub mod knock;
pub mod media;
pub mod membership;
pub mod query;
pub mod receive;
pub mod sender;
pub mod spaces;
pub mod transaction;
pub mod transport;

use std::sync::Arc;

use axum::Router;
use ruma::OwnedServerName;
use weft_core::Core;
use weft_http::{config::Config, error::MatrixError, state::AppState};

/// The federation side of a running server: the client that reaches other servers and the key
/// ring that checks what they sign. Installed in the app state as its `ServerAuth`; handlers
/// reach it with `of(&state)`.
pub struct Federation {
    pub client: client::Client,
    pub keys: keys::KeyRing,
    /// Received PDUs are processed one room at a time in arrival order.
    pub room_queues: transaction::RoomQueues,
    /// Remote media fetches under way (one per media at a time).
    pub media_fetches: media::Fetches,
    /// Other servers' answers about rooms of spaces, kept briefly.
    pub space_summaries: spaces::Summaries,
}

impl Federation {
    pub fn new(core: Core, config: &Config, extra_roots: &[reqwest::Certificate]) -> Result<Arc<Federation>, String> {
        let client = client::Client::new(
            core,
            client::Settings {
                enabled: config.federation.enabled,
                extra_roots,
                insecure: config.federation.tls_insecure_skip_verify,
                max_response: config.federation.max_response_size,
            },
        )
        .map_err(|e| e.to_string())?;
        let notaries = config
            .federation
            .trusted_key_servers
            .iter()
            .map(|name| {
                OwnedServerName::try_from(name.as_str())
                    .map_err(|_| format!("federation.trusted_key_servers: {name:?} is not a server name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = keys::KeyRing::new(client.clone(), notaries);
        Ok(Arc::new(Federation {
            client,
            keys,
            room_queues: transaction::RoomQueues::default(),
            media_fetches: media::Fetches::default(),
            space_summaries: spaces::Summaries::default(),
        }))
    }
}

/// The server's federation state, from the app state it was installed in
/// (`AppState::with_server_auth`); M_FORBIDDEN when federation is off.
pub fn of(state: &AppState) -> Result<&Federation, MatrixError> {
    state
        .server_auth
        .as_ref()
        .and_then(|auth| auth.as_any().downcast_ref::<Federation>())
        .ok_or_else(|| MatrixError::forbidden("Federation is disabled on this server"))
}

/// The key server (`/_matrix/key/...`), for a listener with the `keys` API.
pub fn keys_router() -> Router<AppState> {
    api::keys::routes(Router::new())
}

/// The Server-Server API (`/_matrix/federation/...`), for a listener with the `federation`
/// API; it serves the key server too, as servers expect on their federation port.
pub fn router() -> Router<AppState> {
    let router = api::version::routes(keys_router());
    let router = api::send::routes(router);
    let router = api::membership::routes(router);
    let router = api::invite::routes(router);
    let router = api::openid::routes(router);
    let router = api::event::routes(router);
    let router = api::state::routes(router);
    let router = api::backfill::routes(router);
    let router = api::directory::routes(router);
    let router = api::media::routes(router);
    let router = api::rtc::routes(router);
    let router = api::space::routes(router);
    let router = api::user::routes(router);
    api::query::routes(router)
}
