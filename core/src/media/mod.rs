//! The media repository: files on disk by content hash, metadata in the database, thumbnails
//! and URL previews.
//!
//! Media of other servers is fetched over federation (by `weft-federation`) and kept here
//! like local content, one `remote_media` row per (origin, media ID); its thumbnails are made
//! here from that copy.

pub mod preview;
pub mod store;
pub mod thumbnail;

use std::{path::PathBuf, time::Duration};

use ruma::OwnedServerName;

use crate::{util, Db};
pub use store::{Blob, BlobStore, MediaRecord, Upload};

/// The media settings the server passes in (from its `[media]` config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub max_upload_size: u64,
    /// Bytes of uploads each user may have; 0 is unlimited.
    pub max_user_storage: u64,
    /// Mark new uploads as authenticated-only (refused by the legacy unauthenticated
    /// endpoints), like Synapse's `enable_authenticated_media`.
    pub enable_authenticated_media: bool,
    /// How long a media ID from `/create` waits for its upload.
    pub unused_expiration: Duration,
    /// How many such IDs one user may have waiting at once.
    pub max_pending_uploads: u32,
    pub preview: preview::PreviewSettings,
}

/// Failures with a Matrix meaning of their own.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Core(#[from] crate::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    /// The user's storage quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Too many `/create` IDs waiting for their upload.
    #[error("{0}")]
    TooManyPending(String),
    #[error("Media ID already has content")]
    CannotOverwrite,
    #[error("Media has not been uploaded yet")]
    NotYetUploaded,
    /// The content cannot be thumbnailed (not an image, or broken).
    #[error("{0}")]
    CannotThumbnail(String),
    #[error("{0}")]
    InvalidParam(String),
    /// A URL preview could not be fetched from the remote site, or remote media from its
    /// server.
    #[error("{0}")]
    Upstream(String),
    /// Remote media is larger than this server fetches.
    #[error("{0}")]
    RemoteTooLarge(String),
}

impl From<sqlx::Error> for MediaError {
    fn from(e: sqlx::Error) -> MediaError {
        MediaError::Core(e.into())
    }
}

pub type MediaResult<T> = Result<T, MediaError>;

/// Where a finished upload goes.
pub enum Target<'a> {
    /// A new media ID (`POST /upload`).
    New,
    /// An ID reserved by `/create` (`PUT /upload/{server}/{id}`).
    Pending(&'a str),
}

/// The media repository of this server.
#[derive(Clone)]
pub struct Repo {
    pub db: Db,
    pub server_name: OwnedServerName,
    pub settings: Settings,
    pub blobs: BlobStore,
}

impl Repo {
    pub fn new(db: Db, server_name: OwnedServerName, settings: Settings) -> Repo {
        let blobs = BlobStore::new(settings.path.clone());
        Repo {
            db,
            server_name,
            settings,
            blobs,
        }
    }

    /// Refuses an upload up front when its announced length already breaks a limit.
    pub async fn check_upload_size(&self, user_id: &str, announced: Option<u64>) -> MediaResult<()> {
        let Some(len) = announced else { return Ok(()) };
        if len > self.settings.max_upload_size {
            return Err(too_large(self.settings.max_upload_size));
        }
        let mut conn = self.db.conn().await?;
        self.check_quota(&mut conn, user_id, len).await
    }

    async fn check_quota(&self, conn: &mut sqlx::AnyConnection, user_id: &str, extra: u64) -> MediaResult<()> {
        let quota = self.settings.max_user_storage;
        if quota == 0 {
            return Ok(());
        }
        let used = store::user_usage(conn, user_id).await?;
        if used.saturating_add(extra) > quota {
            return Err(MediaError::QuotaExceeded(format!(
                "Media storage quota exceeded: {used} of {quota} bytes used, this upload needs {extra}"
            )));
        }
        Ok(())
    }

    /// Starts receiving an upload's bytes.
    pub async fn begin_upload(&self) -> MediaResult<Upload> {
        Ok(self.blobs.begin(self.settings.max_upload_size).await?)
    }

    /// Reserves a media ID for a later `PUT` (`/create`): (media ID, expiry in ms).
    pub async fn create_pending(&self, user_id: &str) -> MediaResult<(String, i64)> {
        let now = util::now_ms();
        let expires = now + self.settings.unused_expiration.as_millis() as i64;
        let media_id = util::random_string(24);
        let mut tx = self.db.write().await?;
        let pending = store::pending_count(&mut tx, user_id, now).await?;
        if pending >= self.settings.max_pending_uploads as i64 {
            return Err(MediaError::TooManyPending(format!(
                "Too many media IDs waiting for their upload ({pending}); upload or wait for them to expire"
            )));
        }
        store::insert(
            &mut tx,
            &store::NewMedia {
                media_id: &media_id,
                blob: None,
                content_type: None,
                filename: None,
                uploader: user_id,
                unused_expires_ts: Some(expires),
                authenticated: self.settings.enable_authenticated_media,
                url_preview: false,
            },
        )
        .await?;
        tx.commit().await?;
        Ok((media_id, expires))
    }

    /// Checks, before any byte is read, that `user_id` may upload into a `/create` ID.
    pub async fn check_pending(&self, server_name: &str, media_id: &str, user_id: &str) -> MediaResult<()> {
        let record = self.local(server_name, media_id).await?;
        if record.sha256.is_some() {
            return Err(MediaError::CannotOverwrite);
        }
        if record.uploader != user_id {
            return Err(MediaError::Forbidden(
                "Only the creator of this media ID may upload to it".into(),
            ));
        }
        if record.unused_expires_ts.is_some_and(|ts| ts <= util::now_ms()) {
            return Err(MediaError::NotFound("This media ID has expired".into()));
        }
        Ok(())
    }

    /// Makes a complete upload durable and records it: the file first, then the row, so a row
    /// always points at a whole file. Returns the media ID.
    pub async fn finish_upload(
        &self,
        user_id: &str,
        upload: Upload,
        target: Target<'_>,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> MediaResult<String> {
        let content_type = content_type.unwrap_or("application/octet-stream");
        // Checked before the file is kept, so a refused upload stores nothing; checked again
        // in the transaction against concurrent uploads.
        {
            let mut conn = self.db.conn().await?;
            self.check_quota(&mut conn, user_id, upload.size()).await?;
        }
        let blob = upload.finish().await?;
        let mut tx = self.db.write().await?;
        self.check_quota(&mut tx, user_id, blob.size).await?;
        let media_id = match target {
            Target::New => {
                let media_id = util::random_string(24);
                store::insert(
                    &mut tx,
                    &store::NewMedia {
                        media_id: &media_id,
                        blob: Some(&blob),
                        content_type: Some(content_type),
                        filename,
                        uploader: user_id,
                        unused_expires_ts: None,
                        authenticated: self.settings.enable_authenticated_media,
                        url_preview: false,
                    },
                )
                .await?;
                media_id
            }
            Target::Pending(media_id) => {
                if !store::fill_pending(&mut tx, media_id, user_id, &blob, content_type, filename).await? {
                    // Another upload to this ID finished first.
                    return Err(MediaError::CannotOverwrite);
                }
                media_id.to_owned()
            }
        };
        tx.commit().await?;
        Ok(media_id)
    }

    /// Stores bytes the server fetched itself (URL preview images) as a new media ID.
    pub async fn store_fetched(&self, user_id: &str, bytes: &[u8], content_type: &str) -> MediaResult<String> {
        let blob = self.blobs.put(bytes).await?;
        let media_id = util::random_string(24);
        let mut tx = self.db.write().await?;
        store::insert(
            &mut tx,
            &store::NewMedia {
                media_id: &media_id,
                blob: Some(&blob),
                content_type: Some(content_type),
                filename: None,
                uploader: user_id,
                unused_expires_ts: None,
                authenticated: self.settings.enable_authenticated_media,
                url_preview: true,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(media_id)
    }

    /// Whether an MXC URI's server name is this server's.
    pub fn is_local(&self, server_name: &str) -> bool {
        server_name == self.server_name.as_str()
    }

    /// The kept copy of another server's media, if it was fetched before.
    /// Quarantined media is NotFound (and not fetched again).
    pub async fn remote(&self, origin: &str, media_id: &str) -> MediaResult<Option<MediaRecord>> {
        match store::get_remote(&self.db, origin, media_id).await? {
            Some(r) if r.quarantined_by.is_some() => Err(quarantined()),
            other => Ok(other),
        }
    }

    /// Starts receiving another server's media: at most `max_upload_size` bytes, the limit
    /// enforced as the bytes arrive.
    pub async fn begin_remote(&self) -> MediaResult<Upload> {
        Ok(self.blobs.begin(self.settings.max_upload_size).await?)
    }

    /// Keeps fetched remote media: the file, then its row. Answers the record kept (another
    /// fetch's, when one recorded the same media first).
    pub async fn finish_remote(
        &self,
        origin: &str,
        media_id: &str,
        upload: Upload,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> MediaResult<MediaRecord> {
        let blob = upload.finish().await?;
        store::insert_remote(&self.db, origin, media_id, &blob, content_type, filename).await?;
        store::get_remote(&self.db, origin, media_id)
            .await?
            .ok_or_else(|| MediaError::Core(crate::Error::internal("remote media just recorded is gone")))
    }

    /// The record of a local media ID, uploaded or not; quarantined media is NotFound. Another
    /// server's media is not found here (see `remote`).
    pub async fn local(&self, server_name: &str, media_id: &str) -> MediaResult<MediaRecord> {
        if !self.is_local(server_name) {
            return Err(MediaError::NotFound("Media not found".into()));
        }
        let record = store::get(&self.db, media_id).await?;
        match record {
            Some(r) if r.quarantined_by.is_some() => Err(quarantined()),
            Some(r) if r.sha256.is_some() || r.unused_expires_ts.is_some_and(|ts| ts > util::now_ms()) => Ok(r),
            _ => Err(MediaError::NotFound("Media not found".into())),
        }
    }

    /// The record of uploaded local media, waiting up to `timeout` for a `/create` ID to
    /// receive its content (the spec's `timeout_ms`).
    pub async fn uploaded(&self, server_name: &str, media_id: &str, timeout: Duration) -> MediaResult<MediaRecord> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let record = self.local(server_name, media_id).await?;
            if record.sha256.is_some() {
                return Ok(record);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MediaError::NotYetUploaded);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Opens the content of an uploaded record.
    pub async fn open(&self, record: &MediaRecord) -> MediaResult<tokio::fs::File> {
        let sha256 = record.sha256.as_deref().ok_or(MediaError::NotYetUploaded)?;
        self.open_blob(sha256).await
    }

    pub async fn open_blob(&self, sha256: &str) -> MediaResult<tokio::fs::File> {
        match self.blobs.open(sha256).await? {
            Some(file) => Ok(file),
            None => {
                tracing::error!(sha256, "media file missing from the store");
                Err(MediaError::NotFound("Media content is missing".into()))
            }
        }
    }
}

/// The longest a download waits for a `/create` ID's upload, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Quarantined media looks absent to clients and other servers.
fn quarantined() -> MediaError {
    MediaError::NotFound("Media not found".into())
}

fn too_large(limit: u64) -> MediaError {
    MediaError::TooLarge(format!("Upload is larger than {limit} bytes"))
}
