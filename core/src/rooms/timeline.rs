//! Reading a room's timeline in stream order, for `/messages`, `/context` and sync.
//!
//! A pagination token `s<N>` is the point just after stream position N: paginating backwards
//! from it yields positions <= N, forwards yields positions > N.

use sqlx::AnyConnection;

use crate::{storage::events::{self, StoredEvent}, Error, Result};

pub fn token(pos: i64) -> String {
    format!("s{pos}")
}

pub fn parse_token(token: &str) -> Result<i64> {
    // Sync tokens may carry other streams after an underscore; the timeline part comes first.
    let first = token.split('_').next().unwrap_or_default();
    first
        .strip_prefix('s')
        .unwrap_or(first)
        .parse()
        .map_err(|_| Error::InvalidParam(format!("invalid pagination token {token:?}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Backward,
    Forward,
}

/// Up to `limit` timeline events of the room after (forward) or at-and-before (backward) the
/// token position, bounded by `to` when given, in the direction's order.
pub async fn page(conn: &mut AnyConnection, room_id: &str, from: i64, to: Option<i64>, dir: Dir, limit: i64) -> Result<Vec<StoredEvent>> {
    let (cond, order) = match dir {
        Dir::Backward => ("stream_pos <= $2 AND stream_pos > $3", "DESC"),
        Dir::Forward => ("stream_pos > $2 AND stream_pos <= $3", "ASC"),
    };
    let bound = match (dir, to) {
        (Dir::Backward, Some(t)) => t,
        (Dir::Backward, None) => 0,
        (Dir::Forward, Some(t)) => t,
        (Dir::Forward, None) => i64::MAX,
    };
    let sql = format!(
        "SELECT {} FROM events WHERE room_id = $1 AND {cond} AND stream_pos IS NOT NULL ORDER BY stream_pos {order} LIMIT $4",
        events::COLUMNS
    );
    let rows = sqlx::query(&sql).bind(room_id).bind(from).bind(bound).bind(limit).fetch_all(conn).await?;
    rows.iter().map(|r| events::from_row(r).map_err(Error::from)).collect()
}

/// The room's highest timeline position.
pub async fn latest_pos(conn: &mut AnyConnection, room_id: &str) -> Result<i64> {
    let (pos,): (Option<i64>,) = sqlx::query_as("SELECT MAX(stream_pos) FROM events WHERE room_id = $1")
        .bind(room_id)
        .fetch_one(conn)
        .await?;
    Ok(pos.unwrap_or(0))
}
