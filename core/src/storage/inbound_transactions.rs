//! Transactions received from other servers and the answers given (`/send/{txnId}` is
//! idempotent per origin and transaction ID).

use crate::{util::now_ms, Db, Result};

/// How long an answer is kept for a resend: far longer than any sender retries one
/// transaction.
const KEEP_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// The answer given to `origin`'s transaction `txn_id`, if it was processed.
pub async fn answer(db: &Db, origin: &str, txn_id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT response_json FROM federation_inbound_transactions WHERE origin = $1 AND txn_id = $2",
    )
    .bind(origin)
    .bind(txn_id)
    .fetch_optional(db.pool())
    .await?)
}

/// Records the answer to a processed transaction (the first one wins if two raced), and drops
/// answers old enough that no sender still retries them.
pub async fn record(db: &Db, origin: &str, txn_id: &str, response_json: &str) -> Result<()> {
    let now = now_ms();
    let mut tx = db.write().await?;
    sqlx::query(
        "INSERT INTO federation_inbound_transactions (origin, txn_id, response_json, received_ts)
         VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING",
    )
    .bind(origin)
    .bind(txn_id)
    .bind(response_json)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM federation_inbound_transactions WHERE received_ts < $1")
        .bind(now - KEEP_MS)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
