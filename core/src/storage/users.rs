//! The `users` table: accounts, password hashes, admin and deactivation flags, profile.

use sqlx::AnyConnection;

use crate::{util::now_ms, Db, Result};

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub created_ts: i64,
    pub locked: bool,
    pub suspended: bool,
    pub shadow_banned: bool,
    pub erased: bool,
    pub user_type: Option<String>,
}

/// The columns `from_row` reads, in order.
pub const COLUMNS: &str = "user_id, password_hash, is_admin, is_guest, deactivated, displayname, avatar_url,
     created_ts, locked, suspended, shadow_banned, erased, user_type";

pub fn from_row(r: &sqlx::any::AnyRow) -> Result<User> {
    use sqlx::Row;
    Ok(User {
        user_id: r.try_get(0)?,
        password_hash: r.try_get(1)?,
        is_admin: r.try_get::<i64, _>(2)? != 0,
        is_guest: r.try_get::<i64, _>(3)? != 0,
        deactivated: r.try_get::<i64, _>(4)? != 0,
        displayname: r.try_get(5)?,
        avatar_url: r.try_get(6)?,
        created_ts: r.try_get(7)?,
        locked: r.try_get::<i64, _>(8)? != 0,
        suspended: r.try_get::<i64, _>(9)? != 0,
        shadow_banned: r.try_get::<i64, _>(10)? != 0,
        erased: r.try_get::<i64, _>(11)? != 0,
        user_type: r.try_get(12)?,
    })
}

pub async fn insert(
    conn: &mut AnyConnection,
    user_id: &str,
    password_hash: Option<&str>,
    is_admin: bool,
    is_guest: bool,
    displayname: Option<&str>,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO users (user_id, password_hash, is_admin, is_guest, displayname, created_ts)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(password_hash)
    .bind(is_admin as i64)
    .bind(is_guest as i64)
    .bind(displayname)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: &Db, user_id: &str) -> Result<Option<User>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE user_id = $1"))
        .bind(user_id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn set_password_hash(conn: &mut AnyConnection, user_id: &str, hash: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_deactivated(conn: &mut AnyConnection, user_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL,
         avatar_url = NULL WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_displayname(conn: &mut AnyConnection, user_id: &str, name: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET displayname = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_avatar_url(conn: &mut AnyConnection, user_id: &str, url: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE users SET avatar_url = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(url)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn count(db: &Db) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}
