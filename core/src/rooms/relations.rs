//! Relations between events (`m.relates_to`): the events relating to a parent
//! (`/relations`), optionally following relations of relations, and the room's threads
//! (`/threads`), both paginated by stream position and filtered by history visibility.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::AnyConnection;

use super::{
    client_format::{self, Viewer},
    room_rules,
    timeline::{self, Dir},
    visibility,
};
use crate::{
    storage::{
        events::{self, StoredEvent},
        rooms,
    },
    Core, Error, Result,
};

/// How many levels of relations `recurse` follows (the spec asks for at least 3).
pub const MAX_RECURSION_DEPTH: i64 = 3;

/// A `/relations` request.
#[derive(Clone, Debug)]
pub struct RelationsQuery<'a> {
    pub room_id: &'a str,
    pub event_id: &'a str,
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub dir: Dir,
    pub limit: usize,
    pub recurse: bool,
}

/// One page of relating events, already in client format.
#[derive(Debug, Default)]
pub struct RelationsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub recursion_depth: Option<i64>,
}

/// The events relating to `q.event_id` that the viewer may see, newest first by default.
pub async fn relating_events(
    core: &Core,
    conn: &mut AnyConnection,
    viewer: Viewer<'_>,
    q: &RelationsQuery<'_>,
) -> Result<RelationsPage> {
    room_rules(core, conn, q.room_id).await?;
    ensure_parent_visible(core, conn, viewer.user_id, q.room_id, q.event_id).await?;
    let depth = if q.recurse { MAX_RECURSION_DEPTH } else { 1 };
    let start = match (q.from, q.dir) {
        (Some(t), _) => timeline::parse_token(t)?,
        (None, Dir::Backward) => i64::MAX,
        (None, Dir::Forward) => 0,
    };
    let bound = match (q.to.map(timeline::parse_token).transpose()?, q.dir) {
        (Some(t), _) => t,
        (None, Dir::Backward) => 0,
        (None, Dir::Forward) => i64::MAX,
    };

    // Fetch in batches until one more visible event than asked for shows there is a next page.
    let batch_size = ((q.limit + 1) * 2) as i64;
    let mut cursor = start;
    let mut found = Vec::new();
    loop {
        let batch = related_page(conn, q, depth, cursor, bound, batch_size).await?;
        let fetched = batch.len() as i64;
        let Some(last_pos) = batch.last().and_then(|e| e.stream_pos) else {
            break;
        };
        found.extend(visibility::filter_visible(core, conn, viewer.user_id, q.room_id, batch).await?);
        if found.len() > q.limit || fetched < batch_size {
            break;
        }
        cursor = after(q.dir, last_pos);
    }
    let more = found.len() > q.limit;
    found.truncate(q.limit);
    let next_batch = match (more, found.last().and_then(|e| e.stream_pos)) {
        (true, Some(pos)) => Some(timeline::token(after(q.dir, pos))),
        _ => None,
    };
    Ok(RelationsPage {
        chunk: client_format::format(core, conn, &found, Some(viewer)).await?,
        next_batch,
        prev_batch: q.from.map(str::to_owned),
        recursion_depth: q.recurse.then_some(MAX_RECURSION_DEPTH),
    })
}

/// The token position that continues a page after the event at `pos` (see timeline.rs: a
/// backward token includes its position, a forward one excludes it).
fn after(dir: Dir, pos: i64) -> i64 {
    match dir {
        Dir::Backward => pos - 1,
        Dir::Forward => pos,
    }
}

/// Unknown and invisible parents look the same, so their existence does not leak.
async fn ensure_parent_visible(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    event_id: &str,
) -> Result<()> {
    let not_found = || Error::NotFound("Event not found".into());
    let parent = events::get(conn, event_id).await?.ok_or_else(not_found)?;
    if parent.room_id != room_id || parent.stream_pos.is_none() {
        return Err(not_found());
    }
    if visibility::filter_visible(core, conn, user, room_id, vec![parent])
        .await?
        .is_empty()
    {
        return Err(not_found());
    }
    Ok(())
}

/// Up to `limit` events relating to the parent within `depth` levels, in the page's direction
/// from `cursor` to `bound`. Redacted relations no longer count, as with aggregations.
async fn related_page(
    conn: &mut AnyConnection,
    q: &RelationsQuery<'_>,
    depth: i64,
    cursor: i64,
    bound: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let (range, order) = match q.dir {
        Dir::Backward => ("stream_pos <= $4 AND stream_pos > $5", "DESC"),
        Dir::Forward => ("stream_pos > $4 AND stream_pos <= $5", "ASC"),
    };
    let mut filters = String::new();
    let mut next = 7;
    if q.rel_type.is_some() {
        filters.push_str(&format!(" AND rel_type = ${next}"));
        next += 1;
    }
    let mut type_filter = String::new();
    if q.event_type.is_some() {
        type_filter = format!(" AND event_type = ${next}");
    }
    // Relations of relations: the recursive part walks the relation graph level by level; the
    // type filters apply to the returned events only, as Synapse does.
    let sql = format!(
        "WITH RECURSIVE related (event_id, rel_type, depth) AS (
             SELECT event_id, rel_type, 1 FROM event_relations WHERE relates_to = $1 AND room_id = $2
             UNION
             SELECT r.event_id, r.rel_type, related.depth + 1 FROM event_relations r
               JOIN related ON r.relates_to = related.event_id WHERE related.depth < $3
         )
         SELECT {} FROM events
         WHERE event_id IN (SELECT event_id FROM related WHERE 1 = 1{filters})
           AND room_id = $2 AND stream_pos IS NOT NULL AND redacted_by IS NULL AND {range}{type_filter}
         ORDER BY stream_pos {order} LIMIT $6",
        events::COLUMNS
    );
    let mut query = sqlx::query(&sql)
        .bind(q.event_id)
        .bind(q.room_id)
        .bind(depth)
        .bind(cursor)
        .bind(bound)
        .bind(limit);
    if let Some(rel_type) = q.rel_type {
        query = query.bind(rel_type);
    }
    if let Some(event_type) = q.event_type {
        query = query.bind(event_type);
    }
    let rows = query.fetch_all(conn).await?;
    Ok(rows
        .iter()
        .map(events::from_row)
        .collect::<std::result::Result<_, _>>()?)
}

/// A `/threads` request.
#[derive(Clone, Debug)]
pub struct ThreadsQuery<'a> {
    pub room_id: &'a str,
    pub from: Option<&'a str>,
    pub limit: usize,
    /// Only threads the viewer started or replied to.
    pub participated_only: bool,
}

#[derive(Debug, Default)]
pub struct ThreadsPage {
    pub chunk: Vec<Value>,
    pub next_batch: Option<String>,
}

/// The room's thread roots the viewer may see, most recently active first.
pub async fn threads(
    core: &Core,
    conn: &mut AnyConnection,
    viewer: Viewer<'_>,
    q: &ThreadsQuery<'_>,
) -> Result<ThreadsPage> {
    room_rules(core, conn, q.room_id).await?;
    let member = rooms::membership(conn, q.room_id, viewer.user_id).await?.is_some();
    if !member && !visibility::can_read_room(conn, viewer.user_id, q.room_id).await? {
        return Err(Error::Forbidden("You are not allowed to read this room".into()));
    }
    // A token is the latest activity of the last thread returned; the next page is older.
    let mut cursor = match q.from {
        Some(t) => timeline::parse_token(t)?,
        None => i64::MAX,
    };
    let batch_size = ((q.limit + 1) * 2) as i64;
    let mut found: Vec<(StoredEvent, i64)> = Vec::new();
    loop {
        let batch = thread_roots_page(conn, q, viewer.user_id, cursor, batch_size).await?;
        let fetched = batch.len() as i64;
        let Some(&(_, last_activity)) = batch.last() else { break };
        found.extend(visible_roots(core, conn, viewer.user_id, q.room_id, batch).await?);
        if found.len() > q.limit || fetched < batch_size {
            break;
        }
        cursor = last_activity;
    }
    let more = found.len() > q.limit;
    found.truncate(q.limit);
    let next_batch = match (more, found.last()) {
        (true, Some((_, activity))) => Some(timeline::token(*activity)),
        _ => None,
    };
    let roots: Vec<StoredEvent> = found.into_iter().map(|(e, _)| e).collect();
    Ok(ThreadsPage {
        chunk: client_format::format(core, conn, &roots, Some(viewer)).await?,
        next_batch,
    })
}

/// `(root event ID, stream position of the thread's latest event)`, latest activity below
/// `cursor` first.
async fn thread_roots_page(
    conn: &mut AnyConnection,
    q: &ThreadsQuery<'_>,
    user: &str,
    cursor: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    // Participation: the user sent the root or a reply in the thread.
    let participated = if q.participated_only {
        " AND (r.relates_to IN (SELECT r2.relates_to FROM event_relations r2 JOIN events e2 ON e2.event_id = r2.event_id
                                WHERE r2.room_id = $1 AND r2.rel_type = 'm.thread' AND e2.sender = $4)
               OR r.relates_to IN (SELECT event_id FROM events WHERE room_id = $1 AND sender = $4))"
    } else {
        ""
    };
    let sql = format!(
        "SELECT r.relates_to, MAX(e.stream_pos) AS latest FROM event_relations r JOIN events e ON e.event_id = r.event_id
         WHERE r.room_id = $1 AND r.rel_type = 'm.thread' AND e.stream_pos IS NOT NULL{participated}
         GROUP BY r.relates_to HAVING MAX(e.stream_pos) < $2
         ORDER BY latest DESC LIMIT $3"
    );
    let mut query = sqlx::query_as(&sql).bind(q.room_id).bind(cursor).bind(limit);
    if q.participated_only {
        query = query.bind(user);
    }
    Ok(query.fetch_all(conn).await?)
}

/// The roots of `batch` that exist in the room and that the user may see, in batch order.
async fn visible_roots(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    batch: Vec<(String, i64)>,
) -> Result<Vec<(StoredEvent, i64)>> {
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    let mut by_id: HashMap<String, StoredEvent> = events::get_many(conn, &ids)
        .await?
        .into_iter()
        .filter(|e| e.room_id == room_id && e.stream_pos.is_some())
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let activity: HashMap<String, i64> = batch.iter().cloned().collect();
    let ordered: Vec<StoredEvent> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    let visible = visibility::filter_visible(core, conn, user, room_id, ordered).await?;
    Ok(visible
        .into_iter()
        .map(|e| {
            let latest = activity.get(&e.event_id).copied().unwrap_or_default();
            (e, latest)
        })
        .collect())
}
