//! Server-side key backup: numbered backup versions per user, each holding encrypted room keys
//! by room and session. Only the current (highest non-deleted) version accepts keys.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::AnyConnection;

use crate::{Core, Error, Result};

/// Why a backup request was refused, beyond plain core errors.
#[derive(Debug)]
pub enum BackupError {
    Core(Error),
    /// Keys may only go into the current version (the spec's M_WRONG_ROOM_KEYS_VERSION).
    WrongVersion {
        current: String,
    },
    NotFound,
}

impl From<Error> for BackupError {
    fn from(e: Error) -> Self {
        BackupError::Core(e)
    }
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Core(e.into())
    }
}

pub type BackupResult<T> = std::result::Result<T, BackupError>;

/// A backup version's description.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    pub version: String,
    /// `{"algorithm", "auth_data"}`.
    pub algorithm: Value,
    pub count: i64,
    pub etag: String,
}

/// One backed-up session key.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionKey {
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: Value,
}

impl SessionKey {
    /// Parses a client's KeyBackupData.
    pub fn from_json(v: &Value) -> Result<SessionKey> {
        let int = |f: &str| {
            v[f].as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::BadJson(format!("key backup data needs a non-negative {f}")))
        };
        Ok(SessionKey {
            first_message_index: int("first_message_index")?,
            forwarded_count: int("forwarded_count")?,
            is_verified: v["is_verified"]
                .as_bool()
                .ok_or_else(|| Error::BadJson("key backup data needs is_verified".into()))?,
            session_data: match &v["session_data"] {
                s @ Value::Object(_) => s.clone(),
                _ => return Err(Error::BadJson("key backup data needs a session_data object".into())),
            },
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        })
    }

    /// The spec's rule for replacing a stored key: a verified key beats an unverified one;
    /// otherwise the lower first message index wins, then the lower forwarded count.
    pub fn better_than(&self, old: &SessionKey) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

fn parse_version(version: &str) -> Option<i64> {
    version.parse::<i64>().ok().filter(|v| *v > 0)
}

async fn current_version(conn: &mut AnyConnection, user_id: &str) -> Result<Option<i64>> {
    let row: (Option<i64>,) =
        sqlx::query_as("SELECT MAX(version) FROM backup_versions WHERE user_id = $1 AND deleted = 0")
            .bind(user_id)
            .fetch_one(conn)
            .await?;
    Ok(row.0)
}

/// Checks that `version` exists and is not deleted; returns it as a number.
async fn existing_version(conn: &mut AnyConnection, user_id: &str, version: &str) -> BackupResult<i64> {
    let v = parse_version(version).ok_or(BackupError::NotFound)?;
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT version FROM backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0")
            .bind(user_id)
            .bind(v)
            .fetch_optional(conn)
            .await?;
    row.map(|r| r.0).ok_or(BackupError::NotFound)
}

/// The one backup algorithm the spec defines.
const CURVE25519_AES_SHA2: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// A version's `{"algorithm", "auth_data"}` must be one clients can read back: a version stored
/// without them answers every read with something no client can parse.
fn check_algorithm(algorithm: &Value) -> Result<()> {
    match algorithm["algorithm"].as_str() {
        Some(CURVE25519_AES_SHA2) => {}
        Some(other) => return Err(Error::InvalidParam(format!("Unknown backup algorithm {other}"))),
        None => return Err(Error::BadJson("A backup version needs an algorithm".into())),
    }
    let auth_data = &algorithm["auth_data"];
    if !auth_data.is_object() {
        return Err(Error::BadJson("A backup version needs auth_data".into()));
    }
    if !auth_data["public_key"].is_string() {
        return Err(Error::BadJson("auth_data needs a public_key string".into()));
    }
    if !matches!(auth_data.get("signatures"), None | Some(Value::Object(_))) {
        return Err(Error::BadJson("auth_data.signatures must be an object".into()));
    }
    Ok(())
}

pub async fn create_version(core: &Core, user_id: &str, algorithm: &Value) -> Result<String> {
    check_algorithm(algorithm)?;
    let mut tx = core.db.write().await?;
    let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM backup_versions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    let version = max.unwrap_or(0) + 1;
    sqlx::query("INSERT INTO backup_versions (user_id, version, algorithm, etag, deleted) VALUES ($1, $2, $3, 0, 0)")
        .bind(user_id)
        .bind(version)
        .bind(algorithm.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(version.to_string())
}

/// A version's info; `None` asks for the current one.
pub async fn version_info(core: &Core, user_id: &str, version: Option<&str>) -> BackupResult<VersionInfo> {
    let mut conn = core.db.conn().await?;
    let v = match version {
        Some(v) => existing_version(&mut conn, user_id, v).await?,
        None => current_version(&mut conn, user_id)
            .await?
            .ok_or(BackupError::NotFound)?,
    };
    info(&mut conn, user_id, v).await
}

async fn info(conn: &mut AnyConnection, user_id: &str, version: i64) -> BackupResult<VersionInfo> {
    let (algorithm, etag): (String, i64) =
        sqlx::query_as("SELECT algorithm, etag FROM backup_versions WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .fetch_one(&mut *conn)
            .await?;
    Ok(VersionInfo {
        version: version.to_string(),
        algorithm: serde_json::from_str(&algorithm).unwrap_or_default(),
        count: count(conn, user_id, version).await?,
        etag: etag.to_string(),
    })
}

async fn count(conn: &mut AnyConnection, user_id: &str, version: i64) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .fetch_one(conn)
        .await?;
    Ok(n)
}

/// Replaces a version's auth data; the algorithm must stay the same.
pub async fn update_version(core: &Core, user_id: &str, version: &str, algorithm: &Value) -> BackupResult<()> {
    check_algorithm(algorithm)?;
    let mut tx = core.db.write().await?;
    let v = existing_version(&mut tx, user_id, version).await?;
    let (old,): (String,) = sqlx::query_as("SELECT algorithm FROM backup_versions WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(v)
        .fetch_one(&mut *tx)
        .await?;
    let old: Value = serde_json::from_str(&old).unwrap_or_default();
    if old["algorithm"] != algorithm["algorithm"] {
        return Err(Error::InvalidParam("the algorithm of a backup version cannot change".into()).into());
    }
    sqlx::query("UPDATE backup_versions SET algorithm = $3 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(v)
        .bind(algorithm.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes a version and its keys; its number is never reused.
pub async fn delete_version(core: &Core, user_id: &str, version: &str) -> BackupResult<()> {
    let mut tx = core.db.write().await?;
    let v = existing_version(&mut tx, user_id, version).await?;
    sqlx::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(v)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(v)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `(etag, count)` after a change.
pub type Summary = (String, i64);

/// Stores keys (room -> session -> key) into the current version, keeping a stored key when it
/// is better than the new one.
pub async fn put_keys(
    core: &Core,
    user_id: &str,
    version: &str,
    keys: &BTreeMap<String, BTreeMap<String, SessionKey>>,
) -> BackupResult<Summary> {
    let mut tx = core.db.write().await?;
    let current = current_version(&mut tx, user_id).await?.ok_or(BackupError::NotFound)?;
    if parse_version(version) != Some(current) {
        return Err(BackupError::WrongVersion {
            current: current.to_string(),
        });
    }
    let mut changed = false;
    for (room_id, sessions) in keys {
        for (session_id, key) in sessions {
            if let Some(old) = get_one(&mut tx, user_id, current, room_id, session_id).await? {
                if !key.better_than(&old) {
                    continue;
                }
            }
            sqlx::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                   first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
                   is_verified = excluded.is_verified, session_data = excluded.session_data",
            )
            .bind(user_id)
            .bind(current)
            .bind(room_id)
            .bind(session_id)
            .bind(key.first_message_index)
            .bind(key.forwarded_count)
            .bind(key.is_verified as i64)
            .bind(key.session_data.to_string())
            .execute(&mut *tx)
            .await?;
            changed = true;
        }
    }
    let summary = finish_change(&mut tx, user_id, current, changed).await?;
    tx.commit().await?;
    Ok(summary)
}

/// Bumps the etag when something changed; returns the version's etag and key count.
async fn finish_change(conn: &mut AnyConnection, user_id: &str, version: i64, changed: bool) -> Result<Summary> {
    if changed {
        sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *conn)
            .await?;
    }
    let (etag,): (i64,) = sqlx::query_as("SELECT etag FROM backup_versions WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .fetch_one(&mut *conn)
        .await?;
    Ok((etag.to_string(), count(conn, user_id, version).await?))
}

async fn get_one(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> Result<Option<SessionKey>> {
    let row: Option<(i64, i64, i64, String)> = sqlx::query_as(
        "SELECT first_message_index, forwarded_count, is_verified, session_data FROM backup_keys
         WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(f, c, v, d)| SessionKey {
        first_message_index: f,
        forwarded_count: c,
        is_verified: v != 0,
        session_data: serde_json::from_str(&d).unwrap_or_default(),
    }))
}

/// Which keys a read or delete addresses.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    All,
    Room(&'a str),
    Session(&'a str, &'a str),
}

impl Scope<'_> {
    fn clause(&self) -> &'static str {
        match self {
            Scope::All => "",
            Scope::Room(_) => " AND room_id = $3",
            Scope::Session(..) => " AND room_id = $3 AND session_id = $4",
        }
    }
}

fn bind_scope<'q>(
    mut q: sqlx::query::QueryAs<'q, sqlx::Any, (String, String, i64, i64, i64, String), sqlx::any::AnyArguments<'q>>,
    scope: Scope<'q>,
) -> sqlx::query::QueryAs<'q, sqlx::Any, (String, String, i64, i64, i64, String), sqlx::any::AnyArguments<'q>> {
    match scope {
        Scope::All => {}
        Scope::Room(r) => q = q.bind(r),
        Scope::Session(r, s) => q = q.bind(r).bind(s),
    }
    q
}

/// Keys of an existing version: room -> session -> key.
pub async fn get_keys(
    core: &Core,
    user_id: &str,
    version: &str,
    scope: Scope<'_>,
) -> BackupResult<BTreeMap<String, BTreeMap<String, SessionKey>>> {
    let mut conn = core.db.conn().await?;
    let v = existing_version(&mut conn, user_id, version).await?;
    let sql = format!(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM backup_keys
         WHERE user_id = $1 AND version = $2{} ORDER BY room_id, session_id",
        scope.clause()
    );
    let rows = bind_scope(sqlx::query_as(&sql).bind(user_id).bind(v), scope)
        .fetch_all(&mut *conn)
        .await?;
    let mut out: BTreeMap<String, BTreeMap<String, SessionKey>> = BTreeMap::new();
    for (room, session, f, c, verified, data) in rows {
        let key = SessionKey {
            first_message_index: f,
            forwarded_count: c,
            is_verified: verified != 0,
            session_data: serde_json::from_str(&data).unwrap_or_default(),
        };
        out.entry(room).or_default().insert(session, key);
    }
    Ok(out)
}

/// Deletes keys of an existing version.
pub async fn delete_keys(core: &Core, user_id: &str, version: &str, scope: Scope<'_>) -> BackupResult<Summary> {
    let mut tx = core.db.write().await?;
    let v = existing_version(&mut tx, user_id, version).await?;
    let sql = format!(
        "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2{}",
        scope.clause()
    );
    let mut q = sqlx::query(&sql).bind(user_id).bind(v);
    match scope {
        Scope::All => {}
        Scope::Room(r) => q = q.bind(r),
        Scope::Session(r, s) => q = q.bind(r).bind(s),
    }
    let deleted = q.execute(&mut *tx).await?.rows_affected() > 0;
    let summary = finish_change(&mut tx, user_id, v, deleted).await?;
    tx.commit().await?;
    Ok(summary)
}
