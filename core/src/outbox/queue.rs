//! The outbox rows of each destination, and the transactions made of them.
//!
//! Positions come from the `federation_outbox` stream, whose row lock orders the commits of
//! the writers that allocate them, so the rows a reader sees are a prefix of the positions: a
//! row never appears below one already read. A batch is therefore always "the destination's
//! rows up to `last_pos`", and acknowledging it deletes exactly those rows.
//!
//! The batch being sent is pinned (`federation_destinations.txn_last_pos`) until it is
//! acknowledged or discarded: read again after a crash, it is the same rows with the same
//! transaction ID, which the receiver deduplicates per (origin, txnId) if the first attempt
//! got through. Positions are never reused, so a transaction ID is never reused either.

use serde_json::{json, value::RawValue, Value};
use sqlx::{AnyConnection, Row};

use crate::{streams, util, Core, Error, Result};

/// At most this many PDUs per transaction (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// At most this many EDUs per transaction (the spec's limit).
pub const MAX_EDUS: usize = 100;

/// One transaction's worth of a destination's rows, in position order.
#[derive(Debug)]
pub struct Batch {
    pub destination: String,
    pub first_pos: i64,
    pub last_pos: i64,
    /// The PDUs as signed (`events.json`).
    pub pdus: Vec<Box<RawValue>>,
    /// Their event IDs, in the same order.
    pub pdu_ids: Vec<String>,
    /// The EDUs, `{"edu_type": ..., "content": ...}`.
    pub edus: Vec<Box<RawValue>>,
}

impl Batch {
    /// The transaction ID: the batch's first and last positions, so the same rows always make
    /// the same ID, and different rows of one destination never do.
    pub fn txn_id(&self) -> String {
        format!("{}-{}", self.first_pos, self.last_pos)
    }

    /// The body of `PUT /_matrix/federation/v1/send/{txnId}`.
    pub fn body(&self, origin: &str, origin_server_ts: i64) -> Value {
        json!({
            "origin": origin,
            "origin_server_ts": origin_server_ts,
            "pdus": self.pdus,
            "edus": self.edus,
        })
    }
}

/// Queues an EDU for one destination, inside the caller's transaction; returns its position.
/// It takes the `federation_outbox` stream's row lock until the transaction ends, so call it
/// late in the transaction. After the commit, something should tick the notifier (typing and
/// receipts do) so the sender looks at once; otherwise it looks at its next poll.
pub async fn enqueue_edu(conn: &mut AnyConnection, destination: &str, edu: &Value) -> Result<i64> {
    let edu_json = serde_json::to_string(edu).map_err(Error::internal)?;
    let pos = streams::next_pos(&mut *conn, "federation_outbox").await?;
    sqlx::query("INSERT INTO federation_outbox (destination, pos, kind, edu_json) VALUES ($1, $2, 'edu', $3)")
        .bind(destination)
        .bind(pos)
        .bind(edu_json)
        .execute(&mut *conn)
        .await?;
    Ok(pos)
}

/// Queues a stored event for `destinations`, inside the caller's transaction: for events the
/// tailer does not send because their sender is not local, but that this server must pass on
/// (another server's join or leave it accepted through `send_join`/`send_leave`, as the
/// resident server). Same locking as `enqueue_edu`.
pub async fn enqueue_pdu(conn: &mut AnyConnection, destinations: &[String], event_id: &str) -> Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let pos = streams::next_pos(&mut *conn, "federation_outbox").await?;
    for destination in destinations {
        sqlx::query("INSERT INTO federation_outbox (destination, pos, kind, event_id) VALUES ($1, $2, 'pdu', $3)")
            .bind(destination)
            .bind(pos)
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The next transaction for `destination`: the pinned one if a send of it was not
/// acknowledged, else the longest run of its first rows holding at most `MAX_PDUS` PDUs and
/// `MAX_EDUS` EDUs, pinned from now on. `None` when nothing is queued. Rows that cannot be
/// sent (an event no longer stored, JSON that does not parse) are dropped with a warning.
pub async fn next_batch(core: &Core, destination: &str) -> Result<Option<Batch>> {
    let mut tx = core.db.write().await?;
    // Locks the destination's row (PostgreSQL), so two senders (a lease taken over from a
    // stalled holder) read the same pin rather than each pinning a batch of its own.
    let pinned: Option<i64> = sqlx::query_scalar(
        "INSERT INTO federation_destinations (destination) VALUES ($1)
         ON CONFLICT (destination) DO UPDATE SET txn_last_pos = federation_destinations.txn_last_pos
         RETURNING txn_last_pos",
    )
    .bind(destination)
    .fetch_one(&mut *tx)
    .await?;
    let mut rows = match pinned {
        Some(last) => read_rows(&mut tx, destination, Some(last)).await?,
        None => Vec::new(),
    };
    let batch = loop {
        if rows.is_empty() {
            rows = read_rows(&mut tx, destination, None).await?;
            rows = first_transaction(rows);
            let Some(last) = rows.last() else { break None };
            pin(&mut tx, destination, Some(last.pos)).await?;
        }
        let batch = into_batch(destination, std::mem::take(&mut rows));
        if !batch.pdus.is_empty() || !batch.edus.is_empty() {
            break Some(batch);
        }
        // Nothing in it could be sent: drop those rows and look further.
        delete_up_to(&mut tx, destination, batch.last_pos).await?;
        pin(&mut tx, destination, None).await?;
    };
    if batch.is_none() && pinned.is_some() {
        pin(&mut tx, destination, None).await?;
    }
    tx.commit().await?;
    Ok(batch)
}

/// The destination acknowledged the transaction ending at `last_pos`: its rows go, the
/// backoff is reset and the success recorded.
pub async fn ack(core: &Core, destination: &str, last_pos: i64) -> Result<()> {
    let mut tx = core.db.write().await?;
    delete_up_to(&mut tx, destination, last_pos).await?;
    sqlx::query(
        "INSERT INTO federation_destinations (destination, last_success_ts, last_success_pos) VALUES ($1, $2, $3)
         ON CONFLICT (destination) DO UPDATE SET retry_count = 0, retry_after_ts = 0, last_success_ts = $2,
           last_success_pos = $3,
           txn_last_pos = CASE WHEN federation_destinations.txn_last_pos <= $3 THEN NULL
                               ELSE federation_destinations.txn_last_pos END",
    )
    .bind(destination)
    .bind(util::now_ms())
    .bind(last_pos)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The destination refused the transaction ending at `last_pos` in a way that resending can
/// never change: its rows are dropped (one bad transaction must not block the queue forever)
/// and the error recorded, without backoff.
pub async fn discard(core: &Core, destination: &str, last_pos: i64, error: &str) -> Result<()> {
    let mut tx = core.db.write().await?;
    delete_up_to(&mut tx, destination, last_pos).await?;
    sqlx::query(
        "INSERT INTO federation_destinations (destination, last_failure_ts, last_error) VALUES ($1, $2, $3)
         ON CONFLICT (destination) DO UPDATE SET last_failure_ts = $2, last_error = $3,
           txn_last_pos = CASE WHEN federation_destinations.txn_last_pos <= $4 THEN NULL
                               ELSE federation_destinations.txn_last_pos END",
    )
    .bind(destination)
    .bind(util::now_ms())
    .bind(super::destinations::clip(error))
    .bind(last_pos)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What the outbox holds, over every destination.
#[derive(Debug, Default)]
pub struct Depth {
    pub pdus: i64,
    pub edus: i64,
    /// Destinations with at least one row.
    pub destinations: i64,
}

/// How much the outbox holds: a count over the queue's rows, for the metrics.
pub async fn depth(core: &Core) -> Result<Depth> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN kind = 'pdu' THEN 1 ELSE 0 END), 0) AS pdus,
                COALESCE(SUM(CASE WHEN kind = 'edu' THEN 1 ELSE 0 END), 0) AS edus,
                COUNT(DISTINCT destination) AS destinations
         FROM federation_outbox",
    )
    .fetch_one(core.db.pool())
    .await?;
    Ok(Depth {
        pdus: row.try_get("pdus")?,
        edus: row.try_get("edus")?,
        destinations: row.try_get("destinations")?,
    })
}

/// A queued row with what it carries: the event's signed JSON for a PDU (`None` if the event
/// is gone), the EDU's JSON for an EDU.
struct Queued {
    pos: i64,
    is_pdu: bool,
    event_id: Option<String>,
    json: Option<String>,
}

/// The destination's rows in position order: those up to `upto`, or (with `None`) as many as
/// the largest transaction could take.
async fn read_rows(conn: &mut AnyConnection, destination: &str, upto: Option<i64>) -> Result<Vec<Queued>> {
    let rows = sqlx::query(
        "SELECT o.pos, o.kind, CASE WHEN o.kind = 'pdu' THEN e.json ELSE o.edu_json END, o.event_id
         FROM federation_outbox o LEFT JOIN events e ON e.event_id = o.event_id
         WHERE o.destination = $1 AND o.pos <= $2 ORDER BY o.pos LIMIT $3",
    )
    .bind(destination)
    .bind(upto.unwrap_or(i64::MAX))
    .bind((MAX_PDUS + MAX_EDUS) as i64)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Queued {
                pos: r.try_get(0)?,
                is_pdu: r.try_get::<String, _>(1)? == "pdu",
                json: r.try_get(2)?,
                event_id: r.try_get(3)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// The longest run of first rows within the spec's limits.
fn first_transaction(rows: Vec<Queued>) -> Vec<Queued> {
    let (mut pdus, mut edus) = (0, 0);
    rows.into_iter()
        .take_while(|row| {
            let count = if row.is_pdu { &mut pdus } else { &mut edus };
            *count += 1;
            pdus <= MAX_PDUS && edus <= MAX_EDUS
        })
        .collect()
}

/// Caller guarantees `rows` is not empty.
fn into_batch(destination: &str, rows: Vec<Queued>) -> Batch {
    let first_pos = rows.first().map_or(0, |r| r.pos);
    let last_pos = rows.last().map_or(0, |r| r.pos);
    let mut batch = Batch {
        destination: destination.to_owned(),
        first_pos,
        last_pos,
        pdus: Vec::new(),
        pdu_ids: Vec::new(),
        edus: Vec::new(),
    };
    for row in rows {
        let kind = if row.is_pdu { "PDU" } else { "EDU" };
        let Some(json) = row.json else {
            tracing::warn!(
                destination,
                pos = row.pos,
                "outbox: dropping a {kind} with nothing to send (event no longer stored)"
            );
            continue;
        };
        match RawValue::from_string(json) {
            Ok(raw) if row.is_pdu => {
                batch.pdus.push(raw);
                batch.pdu_ids.push(row.event_id.unwrap_or_default());
            }
            Ok(raw) => batch.edus.push(raw),
            Err(e) => tracing::warn!(
                destination,
                pos = row.pos,
                "outbox: dropping a {kind} that is not JSON: {e}"
            ),
        }
    }
    batch
}

async fn delete_up_to(conn: &mut AnyConnection, destination: &str, last_pos: i64) -> Result<()> {
    sqlx::query("DELETE FROM federation_outbox WHERE destination = $1 AND pos <= $2")
        .bind(destination)
        .bind(last_pos)
        .execute(conn)
        .await?;
    Ok(())
}

async fn pin(conn: &mut AnyConnection, destination: &str, last_pos: Option<i64>) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_destinations (destination, txn_last_pos) VALUES ($1, $2)
         ON CONFLICT (destination) DO UPDATE SET txn_last_pos = $2",
    )
    .bind(destination)
    .bind(last_pos)
    .execute(conn)
    .await?;
    Ok(())
}
