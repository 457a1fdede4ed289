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

use std::sync::Arc;

use sqlx::AnyConnection;

use crate::{Db, Error, Result};

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

/// The streams a sync token carries, by name, with their positions.
pub type Positions = Vec<(String, i64)>;

/// Reads of the sync streams' positions, shared by the requests that ask at the same time.
///
/// One message wakes every long-poll in its room at once, and each must read the positions
/// before it builds its answer. Each caller here gets the result of a read that started after
/// it asked (so it sees every change that committed before it asked, as its own read would),
/// but callers who ask while a read is in flight share the next one: reads run back to back,
/// one at a time, whatever the number of callers.
pub struct SharedPositions {
    db: Db,
    pending: std::sync::Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    reading: bool,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<Arc<Positions>, String>>>,
}

impl SharedPositions {
    pub fn new(db: Db) -> Arc<SharedPositions> {
        Arc::new(SharedPositions {
            db,
            pending: Default::default(),
        })
    }

    /// The current positions, read after this call began.
    pub async fn read(self: &Arc<Self>) -> Result<Arc<Positions>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.waiters.push(tx);
            !std::mem::replace(&mut p.reading, true)
        };
        if start {
            tokio::spawn(self.clone().serve());
        }
        rx.await
            .map_err(|_| Error::Internal("the stream positions read was dropped".into()))?
            .map_err(|e| Error::Internal(format!("reading stream positions: {e}")))
    }

    /// Reads for everyone waiting, again while more came during the read, then stops.
    async fn serve(self: Arc<Self>) {
        loop {
            let waiters = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if p.waiters.is_empty() {
                    p.reading = false;
                    return;
                }
                std::mem::take(&mut p.waiters)
            };
            let result = sqlx::query_as(
                "SELECT stream, pos FROM stream_positions
                 WHERE stream IN ('events', 'account_data', 'receipts', 'to_device', 'device_lists', 'presence')",
            )
            .fetch_all(self.db.pool())
            .await
            .map(Arc::new)
            .map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }
}
