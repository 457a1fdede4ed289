//! History this server does not have yet: when a user pages `/messages` backwards past the
//! earliest event stored here of a room (one joined over federation, whose older history
//! stayed on the servers that were in it), the events its earliest ones point back to are
//! fetched from other servers (`/backfill`) and stored as backfilled history, and the page is
//! answered from the database as if they had always been here.
//!
//! Core decides when history is missing (`missing_before`); the fetching is federation's,
//! behind the `HistorySource` trait, which the federation crate installs at start-up, so
//! core never depends on it. Without one (federation off, tests of core alone) nothing is
//! fetched.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sqlx::AnyConnection;

use crate::{Core, Result};

/// Fetches a room's history before some of its events from the servers in the room and stores
/// it through the room writer as backfilled events, answering how many were stored.
pub trait HistorySource: Send + Sync {
    fn backfill<'a>(&'a self, room_id: &'a str, before: Vec<String>, limit: usize) -> BoxFuture<'a, Result<usize>>;
}

/// Events asked for per fetch, whatever the page's size (a page that needs more asks again).
const FETCH_LIMIT: usize = 100;
/// A room whose history could not be extended is not asked about again for this long, so
/// that paging at the start of a room whose servers have nothing older (or are down) does not
/// wait on them every time.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Backward extremities asked for at once.
const MAX_EXTREMITIES: i64 = 5;

/// The installed history source, and the rooms whose last fetch found nothing.
#[derive(Default)]
pub struct History {
    source: OnceLock<Weak<dyn HistorySource>>,
    /// Room ID -> when its last fruitless fetch ended.
    fruitless: Mutex<HashMap<String, Instant>>,
}

impl History {
    /// Installs where history comes from (once, at start-up). Held weakly: the source (the
    /// federation state) holds this core.
    pub fn install(&self, source: Weak<dyn HistorySource>) {
        let _ = self.source.set(source);
    }

    fn source(&self) -> Option<Arc<dyn HistorySource>> {
        self.source.get().and_then(Weak::upgrade)
    }

    fn recently_fruitless(&self, room_id: &str) -> bool {
        let mut map = self.fruitless.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, at| at.elapsed() < RETRY_AFTER);
        map.contains_key(room_id)
    }

    fn mark(&self, room_id: &str, stored: usize) {
        let mut map = self.fruitless.lock().unwrap_or_else(|e| e.into_inner());
        if stored == 0 {
            map.insert(room_id.to_owned(), Instant::now());
        } else {
            map.remove(room_id);
        }
    }
}

/// The room's backward extremities: events its timeline's events point back to (prev events)
/// that are not in the graph here (unknown, or known only as outliers), the earliest first.
/// A room created here, or whose history reaches its create event, has none.
pub async fn missing_before(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT e.prev_event_id FROM event_edges e JOIN events ev ON ev.event_id = e.event_id
         WHERE ev.room_id = $1 AND ev.stream_pos IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = e.prev_event_id AND p.outlier = 0)
         GROUP BY e.prev_event_id
         ORDER BY MIN(ev.depth) ASC
         LIMIT $2",
    )
    .bind(room_id)
    .bind(MAX_EXTREMITIES)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Fetches older history of the room when it has backward extremities and a source is
/// installed; answers whether anything was stored. Failures are logged, not returned: the
/// page is then answered with what is here.
pub async fn fill(core: &Core, room_id: &str) -> Result<bool> {
    let history = &core.history;
    let Some(source) = history.source() else {
        return Ok(false);
    };
    if history.recently_fruitless(room_id) {
        return Ok(false);
    }
    let before = {
        let mut conn = core.db.conn().await?;
        missing_before(&mut conn, room_id).await?
    };
    if before.is_empty() {
        return Ok(false);
    }
    let stored = match source.backfill(room_id, before, FETCH_LIMIT).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::info!(room_id, error = %e, "backfill failed");
            0
        }
    };
    history.mark(room_id, stored);
    Ok(stored > 0)
}
