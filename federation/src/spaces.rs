//! Spaces across servers: core's `RemoteSpaces`, which asks the servers a space's
//! `m.space.child` event names (`via`) for a room this server is not in
//! (`/_matrix/federation/v1/hierarchy`), for a local user's `/hierarchy`. Answers are kept a
//! short while, so that paging through a space asks each room's servers once; a room none of
//! them would describe is remembered as such for as long.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use ruma::{api::federation::space::get_hierarchy, OwnedRoomId, ServerName};
use weft_core::rooms::hierarchy::{RemoteRoom, RemoteSpaces};

use crate::Federation;

/// How long an answer is used before the room's servers are asked again.
const KEEP: Duration = Duration::from_secs(5 * 60);
/// Rooms whose answers are kept.
const CAPACITY: usize = 1000;
/// How long one server gets to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers asked about one room before giving up.
const MAX_SERVERS: usize = 3;

/// An answer (or that there was none), with when it was fetched.
type Kept = (Instant, Option<Arc<RemoteRoom>>);

/// Answers by (room ID, suggested only).
pub struct Summaries(quick_cache::sync::Cache<(String, bool), Kept>);

impl Default for Summaries {
    fn default() -> Summaries {
        Summaries(quick_cache::sync::Cache::new(CAPACITY))
    }
}

impl RemoteSpaces for Federation {
    fn room<'a>(
        &'a self,
        room_id: &'a str,
        via: &'a [String],
        suggested_only: bool,
    ) -> BoxFuture<'a, Option<RemoteRoom>> {
        Box::pin(async move {
            let key = (room_id.to_owned(), suggested_only);
            if let Some((at, kept)) = self.space_summaries.0.get(&key) {
                if at.elapsed() < KEEP {
                    return kept.as_deref().cloned();
                }
            }
            let fetched = fetch(self, room_id, via, suggested_only).await.map(Arc::new);
            self.space_summaries.0.insert(key, (Instant::now(), fetched.clone()));
            fetched.as_deref().cloned()
        })
    }
}

/// The first answer of the `via` servers (this one left out) asked in turn.
async fn fetch(fed: &Federation, room_id: &str, via: &[String], suggested_only: bool) -> Option<RemoteRoom> {
    let room_id = OwnedRoomId::try_from(room_id).ok()?;
    let own = fed.client.core().server_name.as_str();
    let servers = via
        .iter()
        .filter(|s| s.as_str() != own)
        .filter_map(|s| ServerName::parse(s).ok())
        .take(MAX_SERVERS);
    for server in servers {
        let mut request = get_hierarchy::v1::Request::new(room_id.clone());
        request.suggested_only = suggested_only;
        match fed.client.send_with_timeout(&server, request, REQUEST_TIMEOUT).await {
            Ok(answer) => match remote_room(answer) {
                Some(room) => return Some(room),
                None => tracing::info!(%server, %room_id, "a hierarchy answer that does not parse"),
            },
            Err(e) => tracing::info!(%server, %room_id, "no hierarchy from the server: {e}"),
        }
    }
    None
}

/// Core's shape of an answer: the summaries as JSON, as the client API carries them.
fn remote_room(answer: get_hierarchy::v1::Response) -> Option<RemoteRoom> {
    let mut room = serde_json::to_value(&answer.room.summary).ok()?;
    room["children_state"] = serde_json::to_value(&answer.room.children_state).ok()?;
    let children = answer
        .children
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        // What the server could not let this one see is not shown.
        .filter(|c| {
            !answer
                .inaccessible_children
                .iter()
                .any(|id| c["room_id"] == id.as_str())
        })
        .collect();
    Some(RemoteRoom { room, children })
}
