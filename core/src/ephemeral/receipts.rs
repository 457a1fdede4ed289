//! Read receipts (`m.read`, `m.read.private`) on the `receipts` stream.

use sqlx::AnyConnection;

use crate::{
    storage::{InList, IN_CHUNK},
    streams,
    util::now_ms,
    Result,
};

#[derive(Clone, Debug)]
pub struct Receipt {
    pub room_id: String,
    pub receipt_type: String,
    pub user_id: String,
    pub thread_id: String,
    pub event_id: String,
    pub event_stream_pos: i64,
    pub ts: i64,
}

/// Stores a receipt unless the user already has one at a later event. Returns whether it
/// was stored.
pub async fn put(conn: &mut AnyConnection, r: &Receipt) -> Result<bool> {
    let existing: Option<(i64,)> = sqlx::query_as(
        "SELECT event_stream_pos FROM receipts WHERE room_id = $1 AND receipt_type = $2 AND user_id = $3 AND thread_id = $4",
    )
    .bind(&r.room_id)
    .bind(&r.receipt_type)
    .bind(&r.user_id)
    .bind(&r.thread_id)
    .fetch_optional(&mut *conn)
    .await?;
    if existing.is_some_and(|(pos,)| pos >= r.event_stream_pos) {
        return Ok(false);
    }
    let pos = streams::next_pos(&mut *conn, "receipts").await?;
    sqlx::query(
        "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, event_stream_pos, ts, stream_pos)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = excluded.event_id,
           event_stream_pos = excluded.event_stream_pos, ts = excluded.ts, stream_pos = excluded.stream_pos",
    )
    .bind(&r.room_id)
    .bind(&r.receipt_type)
    .bind(&r.user_id)
    .bind(&r.thread_id)
    .bind(&r.event_id)
    .bind(r.event_stream_pos)
    .bind(if r.ts > 0 { r.ts } else { now_ms() })
    .bind(pos)
    .execute(conn)
    .await?;
    Ok(true)
}

type Row = (String, String, String, String, String, i64, i64);

const RECEIPT_COLUMNS: &str = "room_id, receipt_type, user_id, thread_id, event_id, event_stream_pos, ts";

fn from_row(r: Row) -> Receipt {
    Receipt {
        room_id: r.0,
        receipt_type: r.1,
        user_id: r.2,
        thread_id: r.3,
        event_id: r.4,
        event_stream_pos: r.5,
        ts: r.6,
    }
}

/// Receipts in a room changed after `since` (all when 0).
pub async fn room_since(conn: &mut AnyConnection, room_id: &str, since: i64) -> Result<Vec<Receipt>> {
    rooms_since(conn, &[room_id.to_owned()], since, i64::MAX).await
}

/// Receipts in any of the rooms changed in `(since, upto]`, in stream order per room (one query
/// per `IN_CHUNK` rooms).
pub async fn rooms_since(conn: &mut AnyConnection, room_ids: &[String], since: i64, upto: i64) -> Result<Vec<Receipt>> {
    let mut out = Vec::new();
    for chunk in room_ids.chunks(IN_CHUNK) {
        let list = InList::new(conn, 3, chunk.len());
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 AND room_id IN ({})
             ORDER BY stream_pos",
            list.sql()
        );
        let mut q = sqlx::query_as::<_, Row>(&sql).bind(since).bind(upto);
        for room in list.binds(chunk) {
            q = q.bind(room);
        }
        out.extend(q.fetch_all(&mut *conn).await?.into_iter().map(from_row));
    }
    Ok(out)
}

/// Receipts in all rooms changed in `(since, upto]`, in stream order (for incremental syncs,
/// through the stream index).
pub async fn changed(conn: &mut AnyConnection, since: i64, upto: i64) -> Result<Vec<Receipt>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos"
    ))
    .bind(since)
    .bind(upto)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The stream position of the user's latest read receipt (public or private) in a room.
pub async fn read_up_to(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> Result<i64> {
    let (pos,): (Option<i64>,) = sqlx::query_as(
        "SELECT MAX(event_stream_pos) FROM receipts WHERE room_id = $1 AND user_id = $2
         AND receipt_type IN ('m.read', 'm.read.private')",
    )
    .bind(room_id)
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(pos.unwrap_or(0))
}
