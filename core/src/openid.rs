//! OpenID tokens: short-lived proofs of a user's identity for third parties (integration
//! managers, Element Call's SFU), who check them at `/_matrix/federation/v1/openid/userinfo`.
//! They grant nothing else. Stored as SHA-256 hashes, like access tokens.

use std::time::Duration;

use crate::{
    util::{hash_token, now_ms, random_string},
    Db, Result,
};

/// How long an OpenID token is valid (Synapse's lifetime).
pub const LIFETIME: Duration = Duration::from_secs(60 * 60);

/// A new token for `user_id`, valid for `LIFETIME`; expired tokens are cleared on the way.
pub async fn issue(db: &Db, user_id: &str) -> Result<String> {
    let token = random_string(32);
    let now = now_ms();
    let mut tx = db.write().await?;
    sqlx::query("DELETE FROM openid_tokens WHERE expires_ts <= $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
        .bind(hash_token(&token))
        .bind(user_id)
        .bind(now + LIFETIME.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(token)
}

/// The user a token was issued to, while it is valid.
pub async fn user_of(db: &Db, token: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
            .bind(hash_token(token))
            .bind(now_ms())
            .fetch_optional(db.pool())
            .await?,
    )
}
