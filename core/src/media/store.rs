//! Where media lives: file contents on disk, named by their SHA-256 (identical content is
//! stored once), and one database row per media ID (and per thumbnail) pointing at a content
//! hash.
//!
//! A file reaches its final name only complete: it is written to `tmp/`, synced, and renamed
//! into `content/ab/cd/<hash>`. An upload that fails half-way (truncated body, too large,
//! dropped connection) leaves nothing behind, because its temporary file is removed on drop.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use tokio::io::AsyncWriteExt;

use super::MediaError;
use crate::{util, Db, Error, Result};

/// The content-addressed files under `media.path`.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

/// A stored file: its hash (and name) and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into() }
    }

    /// `content/ab/cd/abcd...`: two directory levels keep directories small.
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf> {
        // The hash comes from our own database, but a path must never escape the store.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::internal(format!("invalid content hash {sha256:?}")));
        }
        Ok(self
            .root
            .join("content")
            .join(&sha256[0..2])
            .join(&sha256[2..4])
            .join(sha256))
    }

    /// Starts writing a new file of at most `limit` bytes.
    pub async fn begin(&self, limit: u64) -> Result<Upload> {
        let dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        let temp = dir.join(format!("upload-{}", util::random_string(24)));
        let file = tokio::fs::File::create(&temp).await.map_err(io_error)?;
        Ok(Upload {
            store: self.clone(),
            file,
            temp,
            hasher: Sha256::new(),
            size: 0,
            limit,
            finished: false,
        })
    }

    /// Stores bytes already in memory (thumbnails, preview images).
    pub async fn put(&self, bytes: &[u8]) -> Result<Blob> {
        let mut upload = self.begin(u64::MAX).await?;
        upload.write(bytes).await.map_err(|e| Error::internal(e.to_string()))?;
        upload.finish().await
    }

    /// Opens a stored file for reading; `None` if it is not on disk.
    pub async fn open(&self, sha256: &str) -> Result<Option<tokio::fs::File>> {
        match tokio::fs::File::open(self.path_of(sha256)?).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Reads a whole stored file (for thumbnailing).
    pub async fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path_of(sha256)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Reads the first `n` bytes of a stored file (to sniff its format).
    pub async fn read_prefix(&self, sha256: &str, n: usize) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let Some(file) = self.open(sha256).await? else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::with_capacity(n);
        file.take(n as u64).read_to_end(&mut buf).await.map_err(io_error)?;
        Ok(buf)
    }
}

/// A file being written. Dropping it before [`Upload::finish`] removes the temporary file.
pub struct Upload {
    store: BlobStore,
    file: tokio::fs::File,
    temp: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
    finished: bool,
}

impl Upload {
    /// Appends a chunk; more than the limit in total is `TooLarge`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(MediaError::TooLarge(format!(
                "Upload is larger than {} bytes",
                self.limit
            )));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(io_error)?;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the file durable under its content hash. If that content is already stored, the
    /// new copy is discarded.
    pub async fn finish(mut self) -> Result<Blob> {
        self.file.flush().await.map_err(io_error)?;
        self.file.sync_all().await.map_err(io_error)?;
        let sha256 = hex::encode(self.hasher.clone().finalize());
        let target = self.store.path_of(&sha256)?;
        if tokio::fs::try_exists(&target).await.map_err(io_error)? {
            // Identical content is stored once; the temp file goes with `self`.
            return Ok(Blob {
                sha256,
                size: self.size,
            });
        }
        let dir = target.parent().expect("content paths have a parent").to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        // rename() is atomic: readers see no file or the whole file, never a partial one.
        tokio::fs::rename(&self.temp, &target).await.map_err(io_error)?;
        self.finished = true;
        sync_dir(&dir).await;
        Ok(Blob {
            sha256,
            size: self.size,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Persists a rename in its directory (best effort: not every platform can open directories).
async fn sync_dir(dir: &Path) {
    if let Ok(dir) = tokio::fs::File::open(dir).await {
        let _ = dir.sync_all().await;
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::internal(format!("media storage: {e}"))
}

// ----- Database rows -----

/// One media ID. `sha256` is `None` while an ID made by `/create` waits for its upload.
#[derive(Clone, Debug)]
pub struct MediaRecord {
    pub media_id: String,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: i64,
    pub uploader: String,
    pub created_ts: i64,
    pub unused_expires_ts: Option<i64>,
    /// Uploaded while authenticated media was enforced: the legacy unauthenticated endpoints
    /// refuse it.
    pub authenticated: bool,
    /// The server of remote media kept here (`remote_media`); `None` for this server's own.
    pub origin: Option<String>,
    /// The admin who quarantined it: then it is answered 404 (see `Repo::local`, `remote`).
    pub quarantined_by: Option<String>,
}

type MediaRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
    i64,
    Option<i64>,
    i64,
    Option<String>,
);

const MEDIA_COLUMNS: &str = "media_id, sha256, content_type, filename, size, uploader, created_ts, unused_expires_ts, \
     authenticated, quarantined_by";

fn from_row(r: MediaRow) -> MediaRecord {
    MediaRecord {
        media_id: r.0,
        sha256: r.1,
        content_type: r.2,
        filename: r.3,
        size: r.4,
        uploader: r.5,
        created_ts: r.6,
        unused_expires_ts: r.7,
        authenticated: r.8 != 0,
        origin: None,
        quarantined_by: r.9,
    }
}

pub async fn get(db: &Db, media_id: &str) -> Result<Option<MediaRecord>> {
    let row: Option<MediaRow> = sqlx::query_as(&format!("SELECT {MEDIA_COLUMNS} FROM media WHERE media_id = $1"))
        .bind(media_id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(from_row))
}

/// What a new row holds.
pub struct NewMedia<'a> {
    pub media_id: &'a str,
    pub blob: Option<&'a Blob>,
    pub content_type: Option<&'a str>,
    pub filename: Option<&'a str>,
    pub uploader: &'a str,
    pub unused_expires_ts: Option<i64>,
    pub authenticated: bool,
    /// Images fetched for URL previews: not the user's upload, so not in their quota.
    pub url_preview: bool,
}

pub async fn insert(conn: &mut AnyConnection, m: &NewMedia<'_>) -> Result<()> {
    let now = util::now_ms();
    sqlx::query(
        "INSERT INTO media (media_id, sha256, content_type, filename, size, uploader, created_ts, uploaded_ts,
                            unused_expires_ts, authenticated, url_preview)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(m.media_id)
    .bind(m.blob.map(|b| b.sha256.as_str()))
    .bind(m.content_type)
    .bind(m.filename)
    .bind(m.blob.map(|b| b.size as i64).unwrap_or(0))
    .bind(m.uploader)
    .bind(now)
    .bind(m.blob.map(|_| now))
    .bind(m.unused_expires_ts)
    .bind(m.authenticated as i64)
    .bind(m.url_preview as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fills in a media ID made by `/create`; false if it was already filled (or is not theirs).
pub async fn fill_pending(
    conn: &mut AnyConnection,
    media_id: &str,
    uploader: &str,
    blob: &Blob,
    content_type: &str,
    filename: Option<&str>,
) -> Result<bool> {
    let res = sqlx::query(
        "UPDATE media SET sha256 = $1, size = $2, content_type = $3, filename = $4, uploaded_ts = $5,
                          unused_expires_ts = NULL
         WHERE media_id = $6 AND uploader = $7 AND sha256 IS NULL",
    )
    .bind(&blob.sha256)
    .bind(blob.size as i64)
    .bind(content_type)
    .bind(filename)
    .bind(util::now_ms())
    .bind(media_id)
    .bind(uploader)
    .execute(conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Bytes a user's uploads take (what their quota counts; identical files count each time,
/// as the user sees them as separate uploads).
pub async fn user_usage(conn: &mut AnyConnection, user_id: &str) -> Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE uploader = $1 AND url_preview = 0",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(n.max(0) as u64)
}

/// IDs made by `/create` that still wait for their upload and have not expired.
pub async fn pending_count(conn: &mut AnyConnection, user_id: &str, now: i64) -> Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM media WHERE uploader = $1 AND sha256 IS NULL AND unused_expires_ts > $2")
            .bind(user_id)
            .bind(now)
            .fetch_one(conn)
            .await?;
    Ok(n)
}

/// A stored thumbnail of one media ID.
#[derive(Clone, Debug)]
pub struct ThumbnailRecord {
    pub sha256: String,
    pub content_type: String,
    pub size: i64,
}

/// The key a thumbnail is generated (and found) by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThumbnailKey<'a> {
    /// The server of remote media; `None` for local media.
    pub origin: Option<&'a str>,
    pub media_id: &'a str,
    pub width: u32,
    pub height: u32,
    pub method: &'a str,
    pub animated: bool,
}

pub async fn get_thumbnail(db: &Db, key: &ThumbnailKey<'_>) -> Result<Option<ThumbnailRecord>> {
    // Local and remote thumbnails live in two tables; the remote one's key adds the origin.
    let sql = match key.origin {
        None => {
            "SELECT sha256, content_type, size FROM media_thumbnails
             WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4 AND animated = $5"
        }
        Some(_) => {
            "SELECT sha256, content_type, size FROM remote_media_thumbnails
             WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4 AND animated = $5 AND origin = $6"
        }
    };
    let mut query = sqlx::query_as::<_, (String, String, i64)>(sql)
        .bind(key.media_id)
        .bind(key.width as i64)
        .bind(key.height as i64)
        .bind(key.method)
        .bind(key.animated as i64);
    if let Some(origin) = key.origin {
        query = query.bind(origin);
    }
    let row = query.fetch_optional(db.pool()).await?;
    Ok(row.map(|(sha256, content_type, size)| ThumbnailRecord {
        sha256,
        content_type,
        size,
    }))
}

/// Records a generated thumbnail; a concurrent request that made the same one first wins.
pub async fn insert_thumbnail(db: &Db, key: &ThumbnailKey<'_>, blob: &Blob, content_type: &str) -> Result<()> {
    let sql = match key.origin {
        None => {
            "INSERT INTO media_thumbnails (media_id, width, height, method, animated, sha256, content_type, size, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (media_id, width, height, method, animated) DO NOTHING"
        }
        Some(_) => {
            "INSERT INTO remote_media_thumbnails
                 (media_id, width, height, method, animated, sha256, content_type, size, created_ts, origin)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (origin, media_id, width, height, method, animated) DO NOTHING"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(key.media_id)
        .bind(key.width as i64)
        .bind(key.height as i64)
        .bind(key.method)
        .bind(key.animated as i64)
        .bind(&blob.sha256)
        .bind(content_type)
        .bind(blob.size as i64)
        .bind(util::now_ms());
    if let Some(origin) = key.origin {
        query = query.bind(origin);
    }
    let mut tx = db.write().await?;
    query.execute(&mut *tx).await?;
    tx.commit().await
}

/// A thumbnail of another server's media fetched from that server (`key.origin` is set).
pub async fn get_fetched_thumbnail(db: &Db, key: &ThumbnailKey<'_>) -> Result<Option<ThumbnailRecord>> {
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT sha256, content_type, size FROM remote_media_fetched_thumbnails
         WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6",
    )
    .bind(key.origin.unwrap_or_default())
    .bind(key.media_id)
    .bind(key.width as i64)
    .bind(key.height as i64)
    .bind(key.method)
    .bind(key.animated as i64)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(sha256, content_type, size)| ThumbnailRecord {
        sha256,
        content_type,
        size,
    }))
}

/// Records a thumbnail fetched from the media's server; a concurrent fetch that recorded
/// first wins.
pub async fn insert_fetched_thumbnail(db: &Db, key: &ThumbnailKey<'_>, blob: &Blob, content_type: &str) -> Result<()> {
    let mut tx = db.write().await?;
    sqlx::query(
        "INSERT INTO remote_media_fetched_thumbnails
             (origin, media_id, width, height, method, animated, sha256, content_type, size, fetched_ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (origin, media_id, width, height, method, animated) DO NOTHING",
    )
    .bind(key.origin.unwrap_or_default())
    .bind(key.media_id)
    .bind(key.width as i64)
    .bind(key.height as i64)
    .bind(key.method)
    .bind(key.animated as i64)
    .bind(&blob.sha256)
    .bind(content_type)
    .bind(blob.size as i64)
    .bind(util::now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

// ----- Remote media kept here -----

/// sha256, content type, filename, size, fetched_ts, quarantined_by.
type RemoteRow = (String, Option<String>, Option<String>, i64, i64, Option<String>);

/// The kept copy of another server's media.
pub async fn get_remote(db: &Db, origin: &str, media_id: &str) -> Result<Option<MediaRecord>> {
    let row: Option<RemoteRow> = sqlx::query_as(
        "SELECT sha256, content_type, filename, size, fetched_ts, quarantined_by FROM remote_media
         WHERE origin = $1 AND media_id = $2",
    )
    .bind(origin)
    .bind(media_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(
        |(sha256, content_type, filename, size, fetched_ts, quarantined_by)| MediaRecord {
            media_id: media_id.to_owned(),
            sha256: Some(sha256),
            content_type,
            filename,
            size,
            uploader: String::new(),
            created_ts: fetched_ts,
            unused_expires_ts: None,
            // Another server's media was never refused by the legacy endpoints for that reason.
            authenticated: false,
            origin: Some(origin.to_owned()),
            quarantined_by,
        },
    ))
}

/// Records fetched remote media; a concurrent fetch of the same media that recorded first wins.
pub async fn insert_remote(
    db: &Db,
    origin: &str,
    media_id: &str,
    blob: &Blob,
    content_type: Option<&str>,
    filename: Option<&str>,
) -> Result<()> {
    let mut tx = db.write().await?;
    sqlx::query(
        "INSERT INTO remote_media (origin, media_id, sha256, content_type, filename, size, fetched_ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (origin, media_id) DO NOTHING",
    )
    .bind(origin)
    .bind(media_id)
    .bind(&blob.sha256)
    .bind(content_type)
    .bind(filename)
    .bind(blob.size as i64)
    .bind(util::now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
