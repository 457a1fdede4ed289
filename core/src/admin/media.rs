//! Media administration: quarantine, protection, deletion (by ID, by age and size), the
//! remote media cache, the media of a room, and users' usage.
//!
//! Quarantined media is answered 404 to clients and other servers (`media::Repo::local` and
//! `remote`) but stays stored until deleted. Protected media (`safe_from_quarantine`) can be
//! neither quarantined nor deleted by age.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::Page;
use crate::{media::Repo, Core, Error, Result};

/// Quarantines (`by` an admin) or releases one media item, local or kept from another server.
/// Protected local media is left alone. Unknown media is NotFound.
pub async fn set_quarantined(repo: &Repo, server: &str, media_id: &str, by: Option<&str>) -> Result<()> {
    let local = repo.is_local(server);
    let mut tx = repo.db.write().await?;
    let exists: Option<i64> = if local {
        sqlx::query_scalar("SELECT 1 FROM media WHERE media_id = $1")
            .bind(media_id)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        sqlx::query_scalar("SELECT 1 FROM remote_media WHERE origin = $1 AND media_id = $2")
            .bind(server)
            .bind(media_id)
            .fetch_optional(&mut *tx)
            .await?
    };
    if exists.is_none() {
        return Err(Error::NotFound("Media not found".into()));
    }
    let sql = match (local, by.is_some()) {
        (true, true) => "UPDATE media SET quarantined_by = $1 WHERE media_id = $2 AND safe_from_quarantine = 0",
        (true, false) => "UPDATE media SET quarantined_by = $1 WHERE media_id = $2",
        (false, _) => "UPDATE remote_media SET quarantined_by = $1 WHERE media_id = $2 AND origin = $3",
    };
    let mut query = sqlx::query(sql).bind(by).bind(media_id);
    if !local {
        query = query.bind(server);
    }
    query.execute(&mut *tx).await?;
    tx.commit().await
}

/// Protects local media from quarantine (or lifts the protection).
pub async fn set_protected(repo: &Repo, media_id: &str, protected: bool) -> Result<()> {
    let mut tx = repo.db.write().await?;
    let done = sqlx::query("UPDATE media SET safe_from_quarantine = $2 WHERE media_id = $1")
        .bind(media_id)
        .bind(i64::from(protected))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    if done == 0 {
        return Err(Error::NotFound("Media not found".into()));
    }
    Ok(())
}

/// The MXC URIs a room's events refer to, this server's and others', each sorted.
pub async fn room_media(core: &Core, room_id: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut conn = core.db.conn().await?;
    crate::rooms::room_rules(core, &mut conn, room_id).await?;
    // Only events whose JSON mentions an MXC URI are parsed.
    let rows: Vec<String> = sqlx::query_scalar("SELECT json FROM events WHERE room_id = $1 AND json LIKE '%mxc://%'")
        .bind(room_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut local = BTreeSet::new();
    let mut remote = BTreeSet::new();
    let own = format!("mxc://{}/", core.server_name);
    for json in rows {
        let event: Value = serde_json::from_str(&json).unwrap_or_default();
        let content = &event["content"];
        let candidates = [
            &content["url"],
            &content["info"]["thumbnail_url"],
            &content["file"]["url"],
            &content["info"]["thumbnail_file"]["url"],
        ];
        for uri in candidates.into_iter().filter_map(Value::as_str) {
            if uri.starts_with(&own) {
                local.insert(uri.to_owned());
            } else if uri.starts_with("mxc://") {
                remote.insert(uri.to_owned());
            }
        }
    }
    Ok((local.into_iter().collect(), remote.into_iter().collect()))
}

/// Quarantines every media item a room's events refer to (protected local media excepted).
/// Answers how many items were quarantined.
pub async fn quarantine_room(repo: &Repo, core: &Core, room_id: &str, by: &str) -> Result<u64> {
    let (local, remote) = room_media(core, room_id).await?;
    let mut tx = repo.db.write().await?;
    let mut count = 0;
    for uri in local.iter().chain(&remote) {
        let Some((server, media_id)) = uri.strip_prefix("mxc://").and_then(|r| r.split_once('/')) else {
            continue;
        };
        let done = if repo.is_local(server) {
            sqlx::query("UPDATE media SET quarantined_by = $1 WHERE media_id = $2 AND safe_from_quarantine = 0")
                .bind(by)
                .bind(media_id)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("UPDATE remote_media SET quarantined_by = $1 WHERE origin = $2 AND media_id = $3")
                .bind(by)
                .bind(server)
                .bind(media_id)
                .execute(&mut *tx)
                .await?
        };
        count += done.rows_affected();
    }
    tx.commit().await?;
    Ok(count)
}

/// Deletes local media by ID (rows, thumbnails, and files no other row uses). Answers the IDs
/// deleted.
pub async fn delete_local(repo: &Repo, media_ids: &[String]) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut hashes = BTreeSet::new();
    let mut tx = repo.db.write().await?;
    for media_id in media_ids {
        let hash: Option<(Option<String>,)> = sqlx::query_as("SELECT sha256 FROM media WHERE media_id = $1")
            .bind(media_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((hash,)) = hash else { continue };
        let thumbnails: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM media_thumbnails WHERE media_id = $1")
            .bind(media_id)
            .fetch_all(&mut *tx)
            .await?;
        // The thumbnails' rows go with the media's (ON DELETE CASCADE).
        sqlx::query("DELETE FROM media WHERE media_id = $1")
            .bind(media_id)
            .execute(&mut *tx)
            .await?;
        hashes.extend(hash);
        hashes.extend(thumbnails);
        deleted.push(media_id.clone());
    }
    tx.commit().await?;
    remove_unused_files(repo, &hashes).await?;
    Ok(deleted)
}

/// Removes the stored files of `hashes` that no media or thumbnail row refers to any more.
/// Content is stored once per hash, so a file another upload also has stays.
async fn remove_unused_files(repo: &Repo, hashes: &BTreeSet<String>) -> Result<()> {
    for hash in hashes {
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM media WHERE sha256 = $1
             UNION ALL SELECT 1 FROM media_thumbnails WHERE sha256 = $1
             UNION ALL SELECT 1 FROM remote_media WHERE sha256 = $1
             UNION ALL SELECT 1 FROM remote_media_thumbnails WHERE sha256 = $1 LIMIT 1",
        )
        .bind(hash)
        .fetch_optional(repo.db.pool())
        .await?;
        if used.is_some() {
            continue;
        }
        let path = repo.blobs.path_of(hash)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a deleted media file"),
        }
    }
    Ok(())
}

/// What `delete_by_age` deletes.
#[derive(Clone, Copy, Debug)]
pub struct AgeQuery {
    /// Uploaded before this (ms since the epoch).
    pub before_ts: i64,
    /// Larger than this many bytes.
    pub size_gt: i64,
    /// Keep media used as a user's or a room's avatar.
    pub keep_profiles: bool,
    pub include_quarantined: bool,
}

/// Deletes local media uploaded before a time and larger than a size; never protected media.
pub async fn delete_by_age(repo: &Repo, query: AgeQuery) -> Result<Vec<String>> {
    if query.before_ts < 30_000 {
        return Err(Error::InvalidParam(
            "Query parameter before_ts you provided is from the year 1970. Double check that you are providing a timestamp in milliseconds.".into(),
        ));
    }
    if query.size_gt < 0 {
        return Err(Error::InvalidParam(
            "Query parameter size_gt must be a positive integer.".into(),
        ));
    }
    let candidates: Vec<String> = sqlx::query_scalar(
        "SELECT media_id FROM media WHERE created_ts < $1 AND size > $2 AND safe_from_quarantine = 0
         AND ($3 = 1 OR quarantined_by IS NULL) ORDER BY media_id",
    )
    .bind(query.before_ts)
    .bind(query.size_gt)
    .bind(i64::from(query.include_quarantined))
    .fetch_all(repo.db.pool())
    .await?;
    let in_use = if query.keep_profiles {
        avatars(repo).await?
    } else {
        BTreeSet::new()
    };
    let own = format!("mxc://{}/", repo.server_name);
    let chosen: Vec<String> = candidates
        .into_iter()
        .filter(|id| !in_use.contains(&format!("{own}{id}")))
        .collect();
    delete_local(repo, &chosen).await
}

/// The MXC URIs used as users' and rooms' avatars.
async fn avatars(repo: &Repo) -> Result<BTreeSet<String>> {
    let mut conn = repo.db.conn().await?;
    let mut used: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT avatar_url FROM users WHERE avatar_url IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let member_and_room: Vec<String> = sqlx::query_scalar(
        "SELECT e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
         WHERE cs.event_type IN ('m.room.avatar', 'm.room.member') AND e.json LIKE '%mxc://%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for json in member_and_room {
        let event: Value = serde_json::from_str(&json).unwrap_or_default();
        for field in ["url", "avatar_url"] {
            if let Some(uri) = event["content"][field].as_str() {
                used.insert(uri.to_owned());
            }
        }
    }
    Ok(used)
}

/// Forgets other servers' media fetched before `before_ts` (their files too, unless used by
/// something else). Answers how many items were dropped.
pub async fn purge_remote_cache(repo: &Repo, before_ts: i64) -> Result<u64> {
    if before_ts < 0 {
        return Err(Error::InvalidParam(
            "Query parameter before_ts must be a positive integer.".into(),
        ));
    }
    let mut tx = repo.db.write().await?;
    let mut hashes: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT sha256 FROM remote_media WHERE fetched_ts < $1")
            .bind(before_ts)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    hashes.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT t.sha256 FROM remote_media_thumbnails t JOIN remote_media m
             ON m.origin = t.origin AND m.media_id = t.media_id WHERE m.fetched_ts < $1",
        )
        .bind(before_ts)
        .fetch_all(&mut *tx)
        .await?,
    );
    let deleted = sqlx::query("DELETE FROM remote_media WHERE fetched_ts < $1")
        .bind(before_ts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    remove_unused_files(repo, &hashes).await?;
    Ok(deleted)
}

/// `GET /_synapse/admin/v1/media/{server}/{mediaId}`: what is stored about one item.
pub async fn info(repo: &Repo, server: &str, media_id: &str) -> Result<Value> {
    if repo.is_local(server) {
        type Row = (
            Option<String>,
            Option<String>,
            i64,
            String,
            i64,
            Option<String>,
            i64,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT content_type, filename, size, uploader, created_ts, quarantined_by, safe_from_quarantine, sha256
             FROM media WHERE media_id = $1",
        )
        .bind(media_id)
        .fetch_optional(repo.db.pool())
        .await?;
        let (content_type, filename, size, uploader, created_ts, quarantined_by, safe, sha256) =
            row.ok_or_else(|| Error::NotFound("Media not found".into()))?;
        return Ok(json!({
            "media_origin": server,
            "user_id": uploader,
            "media_id": media_id,
            "media_type": content_type,
            "media_length": size,
            "upload_name": filename,
            "created_ts": created_ts,
            "last_access_ts": created_ts,
            "quarantined_by": quarantined_by,
            "safe_from_quarantine": safe != 0,
            "sha256": sha256,
        }));
    }
    type Row = (Option<String>, Option<String>, i64, i64, Option<String>, String);
    let row: Option<Row> = sqlx::query_as(
        "SELECT content_type, filename, size, fetched_ts, quarantined_by, sha256 FROM remote_media
         WHERE origin = $1 AND media_id = $2",
    )
    .bind(server)
    .bind(media_id)
    .fetch_optional(repo.db.pool())
    .await?;
    let (content_type, filename, size, fetched_ts, quarantined_by, sha256) =
        row.ok_or_else(|| Error::NotFound("Media not found".into()))?;
    Ok(json!({
        "media_origin": server,
        "user_id": null,
        "media_id": media_id,
        "media_type": content_type,
        "media_length": size,
        "upload_name": filename,
        "created_ts": fetched_ts,
        "last_access_ts": fetched_ts,
        "quarantined_by": quarantined_by,
        "safe_from_quarantine": false,
        "sha256": sha256,
    }))
}

/// How users' media usage is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageOrder {
    UserId,
    Displayname,
    MediaLength,
    MediaCount,
}

impl UsageOrder {
    pub fn parse(value: Option<&str>) -> Result<UsageOrder> {
        Ok(match value.unwrap_or("user_id") {
            "user_id" => UsageOrder::UserId,
            "displayname" => UsageOrder::Displayname,
            "media_length" => UsageOrder::MediaLength,
            "media_count" => UsageOrder::MediaCount,
            other => return Err(Error::InvalidParam(format!("Unknown value for order_by: {other}"))),
        })
    }
}

/// `GET /_synapse/admin/v1/statistics/users/media`'s query.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub page: Page,
    pub order_by: UsageOrder,
    pub backwards: bool,
    pub from_ts: Option<i64>,
    pub until_ts: Option<i64>,
    /// Matched against the user ID and display name.
    pub search_term: Option<String>,
}

/// One user's local media usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub user_id: String,
    pub displayname: Option<String>,
    pub media_count: i64,
    pub media_length: i64,
}

impl Usage {
    pub fn to_json(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "displayname": self.displayname,
            "media_count": self.media_count,
            "media_length": self.media_length,
        })
    }
}

/// Users' uploads (not URL preview images) counted and summed, a page of them, and how many
/// users there are in all.
pub async fn usage(repo: &Repo, query: &UsageQuery) -> Result<(Vec<Usage>, usize)> {
    if query.from_ts.is_some_and(|t| t < 0) || query.until_ts.is_some_and(|t| t < 0) {
        return Err(Error::InvalidParam("Timestamps must be positive integers.".into()));
    }
    if let (Some(from), Some(until)) = (query.from_ts, query.until_ts) {
        if until <= from {
            return Err(Error::InvalidParam(
                "Query parameter until_ts must be greater than from_ts.".into(),
            ));
        }
    }
    type Row = (String, Option<String>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.uploader, u.displayname, COUNT(*), CAST(COALESCE(SUM(m.size), 0) AS BIGINT)
         FROM media m LEFT JOIN users u ON u.user_id = m.uploader
         WHERE m.url_preview = 0 AND m.sha256 IS NOT NULL AND m.created_ts >= $1 AND m.created_ts <= $2
         GROUP BY m.uploader, u.displayname",
    )
    .bind(query.from_ts.unwrap_or(0))
    .bind(query.until_ts.unwrap_or(i64::MAX))
    .fetch_all(repo.db.pool())
    .await?;
    let mut all: Vec<Usage> = rows
        .into_iter()
        .map(|(user_id, displayname, media_count, media_length)| Usage {
            user_id,
            displayname,
            media_count,
            media_length,
        })
        .collect();
    if let Some(term) = query.search_term.as_deref().filter(|t| !t.is_empty()) {
        let term = term.to_lowercase();
        all.retain(|u| {
            u.user_id.to_lowercase().contains(&term)
                || u.displayname
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&term))
        });
    }
    all.sort_by(|a, b| {
        let primary = match query.order_by {
            UsageOrder::UserId => a.user_id.cmp(&b.user_id),
            UsageOrder::Displayname => a.displayname.cmp(&b.displayname),
            UsageOrder::MediaLength => a.media_length.cmp(&b.media_length),
            UsageOrder::MediaCount => a.media_count.cmp(&b.media_count),
        };
        let primary = if query.backwards { primary.reverse() } else { primary };
        primary.then_with(|| a.user_id.cmp(&b.user_id))
    });
    let total = all.len();
    let (users, _) = query.page.slice(all);
    Ok((users, total))
}
