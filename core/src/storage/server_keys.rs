//! Other servers' signing keys (`server_signing_keys`), cached with their validity.

use crate::{Db, Result};

/// A remote server's verify key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub server_name: String,
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    /// Set for a key the server no longer signs with.
    pub expired_ts: Option<i64>,
    pub fetched_ts: i64,
    /// The signed key server answer the key came in.
    pub key_json: String,
}

impl StoredKey {
    /// Whether the key may verify something signed at `ts`: a current key until its
    /// `valid_until_ts`, an old key until it expired.
    pub fn valid_at(&self, ts: i64) -> bool {
        match self.expired_ts {
            Some(expired) => ts < expired,
            None => ts <= self.valid_until_ts,
        }
    }
}

type Row = (String, String, String, i64, Option<i64>, i64, String);

fn from_row((server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts, key_json): Row) -> StoredKey {
    StoredKey {
        server_name,
        key_id,
        public_key,
        valid_until_ts,
        expired_ts,
        fetched_ts,
        key_json,
    }
}

const COLUMNS: &str = "server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts, key_json";

/// Every stored key of `server`.
pub async fn of_server(db: &Db, server: &str) -> Result<Vec<StoredKey>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM server_signing_keys WHERE server_name = $1 ORDER BY key_id"
    ))
    .bind(server)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Stores keys, replacing what was known of them unless that was valid for longer (an answer
/// replayed from before must not shorten or revive anything).
pub async fn upsert(db: &Db, keys: &[StoredKey]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut tx = db.write().await?;
    for key in keys {
        sqlx::query(&format!(
            "INSERT INTO server_signing_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (server_name, key_id) DO UPDATE SET
                 public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts,
                 expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts,
                 key_json = excluded.key_json
             WHERE excluded.valid_until_ts >= server_signing_keys.valid_until_ts
                 AND (server_signing_keys.expired_ts IS NULL OR excluded.expired_ts IS NOT NULL)"
        ))
        .bind(&key.server_name)
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(key.valid_until_ts)
        .bind(key.expired_ts)
        .bind(key.fetched_ts)
        .bind(&key.key_json)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
