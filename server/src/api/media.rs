//! The media repository API (`/_matrix/media/*` and `/_matrix/client/v1/media/*`). (to be written)

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
