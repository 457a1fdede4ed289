//! The `events` table and the graph's edges, auth references and forward extremities.

use sqlx::AnyConnection;

use crate::{db::batch::Batch, Result};

/// An event row: the PDU JSON plus what the server knows about it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub event_id: String,
    pub room_id: String,
    pub stream_pos: Option<i64>,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub json: String,
    pub outlier: bool,
    pub rejected: bool,
    pub soft_failed: bool,
    pub state_before: Option<i64>,
    pub state_after: Option<i64>,
    pub redacted_by: Option<String>,
    pub txn_device: Option<String>,
    pub txn_id: Option<String>,
}

pub const COLUMNS: &str =
    "event_id, room_id, stream_pos, depth, event_type, state_key, sender, origin_server_ts, json, \
     outlier, rejected_reason, soft_failed, state_before, state_after, redacted_by, txn_device, txn_id";

pub fn from_row(r: &sqlx::any::AnyRow) -> std::result::Result<StoredEvent, sqlx::Error> {
    from_row_at(r, 0)
}

/// Reads the `COLUMNS` of an event starting at column `at` (for queries that select more).
pub fn from_row_at(r: &sqlx::any::AnyRow, at: usize) -> std::result::Result<StoredEvent, sqlx::Error> {
    use sqlx::Row;
    Ok(StoredEvent {
        event_id: r.try_get(at)?,
        room_id: r.try_get(at + 1)?,
        stream_pos: r.try_get(at + 2)?,
        depth: r.try_get(at + 3)?,
        event_type: r.try_get(at + 4)?,
        state_key: r.try_get(at + 5)?,
        sender: r.try_get(at + 6)?,
        origin_server_ts: r.try_get(at + 7)?,
        json: r.try_get(at + 8)?,
        outlier: r.try_get::<i64, _>(at + 9)? != 0,
        rejected: r.try_get::<Option<String>, _>(at + 10)?.is_some(),
        soft_failed: r.try_get::<i64, _>(at + 11)? != 0,
        state_before: r.try_get(at + 12)?,
        state_after: r.try_get(at + 13)?,
        redacted_by: r.try_get(at + 14)?,
        txn_device: r.try_get(at + 15)?,
        txn_id: r.try_get(at + 16)?,
    })
}

/// Runs a `SELECT {COLUMNS} FROM events ...` query with string binds.
pub async fn query(conn: &mut AnyConnection, tail: &str, binds: &[&str]) -> Result<Vec<StoredEvent>> {
    let sql = format!("SELECT {COLUMNS} FROM events {tail}");
    // Statements whose text depends on a list's length are not kept in each connection's
    // statement cache: one-off shapes would fill it (and memory) for nothing.
    let mut q = sqlx::query(&sql).persistent(binds.len() <= 4);
    for b in binds {
        q = q.bind(*b);
    }
    let rows = q.fetch_all(conn).await?;
    Ok(rows.iter().map(from_row).collect::<std::result::Result<_, _>>()?)
}

pub async fn get(conn: &mut AnyConnection, event_id: &str) -> Result<Option<StoredEvent>> {
    Ok(query(conn, "WHERE event_id = $1", &[event_id]).await?.pop())
}

/// Fetches many events by ID (missing ones are simply absent).
pub async fn get_many(conn: &mut AnyConnection, ids: &[String]) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::InList::new(conn, 1, chunk.len());
        let tail = format!("WHERE event_id IN ({})", list.sql());
        let binds = list.binds(chunk);
        let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
        out.extend(query(&mut *conn, &tail, &binds).await?);
    }
    Ok(out)
}

/// The stored prev events of any of these events (each once).
pub async fn prev_events_of(conn: &mut AnyConnection, ids: &[String]) -> Result<Vec<StoredEvent>> {
    let mut out: Vec<StoredEvent> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::InList::new(conn, 1, chunk.len());
        let tail = format!(
            "WHERE event_id IN (SELECT prev_event_id FROM event_edges WHERE event_id IN ({}))",
            list.sql()
        );
        let binds = list.binds(chunk);
        let binds: Vec<&str> = binds.iter().map(String::as_str).collect();
        for event in query(&mut *conn, &tail, &binds).await? {
            if seen.insert(event.event_id.clone()) {
                out.push(event);
            }
        }
    }
    Ok(out)
}

/// The room's stored events reachable from `from` (themselves included) through prev events
/// while their depth stays at or above `min_depth`, not rejected: the `limit` deepest, deepest
/// first. Depth falls along every prev edge, so the walk never needs to leave the window to
/// find an event inside it, and one recursive query reads the whole window.
pub async fn ancestors_in_window(
    conn: &mut AnyConnection,
    room_id: &str,
    from: &[String],
    min_depth: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let list = super::InList::new(conn, 4, from.len());
    let sql = format!(
        "WITH RECURSIVE walk (event_id) AS (
             SELECT event_id FROM events WHERE event_id IN ({list}) AND room_id = $1 AND depth >= $2
             UNION
             SELECT p.event_id FROM event_edges e
               JOIN walk ON e.event_id = walk.event_id
               JOIN events p ON p.event_id = e.prev_event_id
               WHERE p.room_id = $1 AND p.depth >= $2
         )
         SELECT {COLUMNS} FROM events
         WHERE event_id IN (SELECT event_id FROM walk) AND rejected_reason IS NULL
         ORDER BY depth DESC, event_id LIMIT $3",
        list = list.sql()
    );
    let mut q = sqlx::query(&sql)
        .persistent(super::keep_prepared(from.len()))
        .bind(room_id)
        .bind(min_depth)
        .bind(limit);
    for b in list.binds(from) {
        q = q.bind(b);
    }
    let rows = q.fetch_all(conn).await?;
    Ok(rows.iter().map(from_row).collect::<std::result::Result<_, _>>()?)
}

/// The sender of a room's create event, if it is stored (as a full event or an outlier).
pub async fn create_event_sender(conn: &mut AnyConnection, room_id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT sender FROM events WHERE room_id = $1 AND event_type = 'm.room.create' AND state_key = ''",
    )
    .bind(room_id)
    .fetch_optional(conn)
    .await?)
}

/// Which of these event IDs are stored (as full events or outliers).
pub async fn known(conn: &mut AnyConnection, ids: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::InList::new(conn, 1, chunk.len());
        let sql = format!("SELECT event_id FROM events WHERE event_id IN ({})", list.sql());
        let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(super::keep_prepared(chunk.len()));
        for b in list.binds(chunk) {
            q = q.bind(b);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// The state keys `((type, state_key), event_id)` of those of these events that are stored,
/// are state events and were not rejected (what of a room state received from elsewhere
/// passed the checks), without reading their JSON.
pub async fn accepted_state_keys(conn: &mut AnyConnection, ids: &[String]) -> Result<Vec<((String, String), String)>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::InList::new(conn, 1, chunk.len());
        let sql = format!(
            "SELECT event_type, state_key, event_id FROM events
             WHERE rejected_reason IS NULL AND state_key IS NOT NULL AND event_id IN ({})",
            list.sql()
        );
        let mut q = sqlx::query_as::<_, (String, String, String)>(&sql).persistent(super::keep_prepared(chunk.len()));
        for b in list.binds(chunk) {
            q = q.bind(b);
        }
        out.extend(
            q.fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|(t, k, id)| ((t, k), id)),
        );
    }
    Ok(out)
}

/// Which of these event IDs are stored as events of the graph (not outliers).
pub async fn known_in_graph(conn: &mut AnyConnection, ids: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(super::IN_CHUNK) {
        let list = super::InList::new(conn, 1, chunk.len());
        let sql = format!(
            "SELECT event_id FROM events WHERE outlier = 0 AND event_id IN ({})",
            list.sql()
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(super::keep_prepared(chunk.len()));
        for b in list.binds(chunk) {
            q = q.bind(b);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

pub struct NewEventRow<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub json: &'a str,
    pub outlier: bool,
    pub rejected_reason: Option<&'a str>,
    pub soft_failed: bool,
    pub state_before: Option<i64>,
    pub state_after: Option<i64>,
    pub txn: Option<(&'a str, &'a str, &'a str)>,
}

/// Inserts the event; with `at_pos`, at the position the batch allocates (see `db::batch`),
/// else with none (rejected, soft-failed).
/// Where an event sits in the timeline stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nowhere: rejected, soft-failed, or an outlier.
    None,
    /// At the batch's position of the `events` stream.
    Live,
    /// At minus the batch's position of the `backfill` stream: below every live position.
    Backfilled,
}

impl Slot {
    fn sql(self) -> &'static str {
        match self {
            Slot::None => "NULL",
            Slot::Live => "{pos}",
            Slot::Backfilled => "-{pos}",
        }
    }
}

pub fn insert<'q>(batch: &mut Batch<'q>, e: &NewEventRow<'q>, slot: Slot) {
    let sql = INSERT_EVENT.replace("$17", slot.sql());
    bind_row(batch.push(&sql, 16), e);
}

/// `insert`, unless the event is stored already (by another writer since it was checked).
pub fn insert_if_absent<'q>(batch: &mut Batch<'q>, e: &NewEventRow<'q>, slot: Slot) {
    let sql = format!(
        "{} ON CONFLICT (event_id) DO NOTHING",
        INSERT_EVENT.replace("$17", slot.sql())
    );
    bind_row(batch.push(&sql, 16), e);
}

fn bind_row<'q>(binder: crate::db::batch::Binder<'_, 'q>, e: &NewEventRow<'q>) {
    binder
        .bind(e.event_id)
        .bind(e.room_id)
        .bind(e.depth)
        .bind(e.event_type)
        .bind(e.state_key)
        .bind(e.sender)
        .bind(e.origin_server_ts)
        .bind(e.json)
        .bind(e.outlier as i64)
        .bind(e.rejected_reason)
        .bind(e.soft_failed as i64)
        .bind(e.state_before)
        .bind(e.state_after)
        .bind(e.txn.map(|t| t.0))
        .bind(e.txn.map(|t| t.1))
        .bind(e.txn.map(|t| t.2));
}

/// Turns a stored outlier into a full event: its state, rejection and place in the stream.
/// Only a row still an outlier changes.
pub fn promote_outlier<'q>(batch: &mut Batch<'q>, e: &NewEventRow<'q>, slot: Slot) {
    let pos = slot.sql();
    batch
        .push(
            &format!(
                "UPDATE events SET outlier = 0, rejected_reason = $2, soft_failed = $3, state_before = $4,
                 state_after = $5, stream_pos = {pos} WHERE event_id = $1 AND outlier = 1"
            ),
            5,
        )
        .bind(e.event_id)
        .bind(e.rejected_reason)
        .bind(e.soft_failed as i64)
        .bind(e.state_before)
        .bind(e.state_after);
}

const INSERT_EVENT: &str =
    "INSERT INTO events (event_id, room_id, depth, event_type, state_key, sender, origin_server_ts,
    json, outlier, rejected_reason, soft_failed, state_before, state_after, txn_user, txn_device, txn_id, stream_pos)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// Records the event's prev and auth references, one statement per table.
pub fn insert_edges<'q>(batch: &mut Batch<'q>, event_id: &'q str, prev: &'q [String], auth: &'q [String]) {
    for (table, column, ids) in [
        ("event_edges", "prev_event_id", prev),
        ("event_auth", "auth_event_id", auth),
    ] {
        for chunk in ids.chunks(super::IN_CHUNK) {
            let rows: Vec<String> = (0..chunk.len()).map(|i| format!("($1, ${})", i + 2)).collect();
            let sql = format!(
                "INSERT INTO {table} (event_id, {column}) VALUES {} ON CONFLICT DO NOTHING",
                rows.join(", ")
            );
            let mut b = batch.push(&sql, chunk.len() + 1).bind(event_id);
            for id in chunk {
                b = b.bind(id.as_str());
            }
        }
    }
}

pub fn set_redacted_by<'q>(batch: &mut Batch<'q>, event_id: &'q str, redaction_id: &'q str) {
    batch
        .push(
            "UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND redacted_by IS NULL",
            2,
        )
        .bind(event_id)
        .bind(redaction_id);
}

/// Whether a known event lists `event_id` as a prev event (then it is no forward extremity).
pub async fn is_referenced(conn: &mut AnyConnection, event_id: &str) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as("SELECT event_id FROM event_edges WHERE prev_event_id = $1 LIMIT 1")
        .bind(event_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// The event a device sent with this transaction ID, if any.
pub async fn by_txn(
    conn: &mut AnyConnection,
    user: &str,
    device: &str,
    txn_id: &str,
    room_id: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT event_id FROM events WHERE txn_user = $1 AND txn_device = $2 AND txn_id = $3 AND room_id = $4",
    )
    .bind(user)
    .bind(device)
    .bind(txn_id)
    .bind(room_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.0))
}
