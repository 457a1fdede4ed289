//! (to be written)

use axum::Router;

use crate::state::AppState;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
}
