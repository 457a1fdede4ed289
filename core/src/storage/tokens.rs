//! Access and refresh tokens, stored as SHA-256 hashes.

use sqlx::AnyConnection;

use crate::{util::now_ms, Db, Result};

/// Who an access token belongs to.
#[derive(Clone, Debug)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub locked: bool,
    pub suspended: bool,
    pub shadow_banned: bool,
    /// An admin's rate limit override: (messages per second, burst); 0/0 is no limit.
    pub ratelimit_override: Option<(i64, i64)>,
}

pub async fn insert_access(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: &str,
    device_id: &str,
    expires_ts: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts, created_ts)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(device_id)
    .bind(expires_ts)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn insert_refresh(conn: &mut AnyConnection, token_hash: &str, user_id: &str, device_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn find_access(db: &Db, token_hash: &str) -> Result<Option<TokenOwner>> {
    type Row = (
        String,
        String,
        Option<i64>,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
    );
    // The account's admin flags ride along: every authenticated request needs them.
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.user_id, t.device_id, t.expires_ts, u.is_admin, u.is_guest, u.deactivated,
                u.locked, u.suspended, u.shadow_banned, r.messages_per_second, r.burst_count
         FROM access_tokens t JOIN users u ON u.user_id = t.user_id
         LEFT JOIN ratelimit_overrides r ON r.user_id = t.user_id
         WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| TokenOwner {
        user_id: r.0,
        device_id: r.1,
        expires_ts: r.2,
        is_admin: r.3 != 0,
        is_guest: r.4 != 0,
        deactivated: r.5 != 0,
        locked: r.6 != 0,
        suspended: r.7 != 0,
        shadow_banned: r.8 != 0,
        ratelimit_override: r.9.zip(r.10),
    }))
}

/// Removes a refresh token and returns its owner `(user_id, device_id)`, if it existed.
pub async fn take_refresh(conn: &mut AnyConnection, token_hash: &str) -> Result<Option<(String, String)>> {
    let row: Option<(String, String)> =
        sqlx::query_as("DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, device_id")
            .bind(token_hash)
            .fetch_optional(conn)
            .await?;
    Ok(row)
}

/// Removes every access token of one device (used when a refresh replaces it).
pub async fn delete_device_access(conn: &mut AnyConnection, user_id: &str, device_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .execute(conn)
        .await?;
    Ok(())
}
