//! Stream positions.
//!
//! Every kind of change a client syncs (account data, timeline events, receipts, ...) has a
//! monotonically increasing position kept in `stream_positions`. `next_pos` bumps the counter
//! with `UPDATE ... RETURNING`, which row-locks it until the transaction ends. Called as the last
//! write of a transaction, this makes transactions of one stream commit in position order, so a
//! reader that sees position N has also seen every lower position: sync can never skip a change
//! that committed late. This holds across processes sharing one PostgreSQL.
//!
//! The timeline stream's position is allocated by the one statement that also writes an
//! event's rows (`db::batch`), so the row lock is held only from that statement to COMMIT.

use sqlx::AnyConnection;

use crate::{Db, Result};

/// Allocates the next position of `stream`; call it last in the writing transaction.
pub async fn next_pos(conn: &mut AnyConnection, stream: &str) -> Result<i64> {
    let (pos,): (i64,) = sqlx::query_as("UPDATE stream_positions SET pos = pos + 1 WHERE stream = $1 RETURNING pos")
        .bind(stream)
        .fetch_one(conn)
        .await?;
    Ok(pos)
}

/// The highest committed position of `stream`.
pub async fn current_pos(db: &Db, stream: &str) -> Result<i64> {
    let (pos,): (i64,) = sqlx::query_as("SELECT pos FROM stream_positions WHERE stream = $1")
        .bind(stream)
        .fetch_one(db.pool())
        .await?;
    Ok(pos)
}

/// Like `current_pos`, for streams that a later migration may not have created yet.
pub async fn current_pos_or_zero(db: &Db, stream: &str) -> Result<i64> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT pos FROM stream_positions WHERE stream = $1")
        .bind(stream)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|r| r.0).unwrap_or(0))
}
