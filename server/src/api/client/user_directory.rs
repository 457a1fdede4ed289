//! `POST /user_directory/search`.

use axum::Router;
use ruma::{api::client::user_directory::search_users, OwnedMxcUri, OwnedUserId};
use weft_core::rooms::user_directory;

use crate::{
    error::ApiResult,
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(search)
}

async fn search(state: AppState, req: Ruma<search_users::v3::Request>) -> ApiResult<search_users::v3::Response> {
    let user = req.sender()?;
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(usize::MAX);
    let mut conn = state.db.conn().await?;
    let (found, limited) = user_directory::search(&mut conn, user.user_id.as_str(), &req.search_term, limit).await?;
    let results = found
        .into_iter()
        .filter_map(|u| {
            let mut out = search_users::v3::User::new(OwnedUserId::try_from(u.user_id).ok()?);
            out.display_name = u.display_name;
            // A malformed stored avatar URL is left out rather than failing the search.
            out.avatar_url = u.avatar_url.map(OwnedMxcUri::from).filter(|m| m.is_valid());
            Some(out)
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
