//! The media repository as every API that serves media sees it (the client media endpoints
//! and the federation ones): core's `Repo` with the configured settings, and files streamed
//! out as they are read.

use tokio::io::AsyncReadExt;
use weft_core::media::{preview::PreviewSettings, Repo, Settings};

use crate::state::AppState;

/// The media repository as configured.
pub fn repo(state: &AppState) -> Repo {
    let c = &state.config.media;
    // Validated at startup, so no range fails to parse here.
    let ranges = |list: &[String]| list.iter().filter_map(|r| r.parse().ok()).collect();
    let settings = Settings {
        path: c.path.clone(),
        max_upload_size: c.max_upload_size as u64,
        max_user_storage: c.max_user_storage,
        enable_authenticated_media: c.enable_authenticated_media,
        unused_expiration: c.unused_expiration_time,
        max_pending_uploads: c.max_pending_media_uploads,
        preview: PreviewSettings {
            enabled: c.url_preview_enabled,
            extra_blocklist: ranges(&c.url_preview_ip_blocklist),
            allowlist: ranges(&c.url_preview_ip_allowlist),
            max_size: c.url_preview_max_size,
            timeout: c.url_preview_timeout,
            extra_roots: state.extra_roots.clone(),
        },
    };
    Repo::new(state.db.clone(), state.core.server_name.clone(), settings)
}

/// A file as a stream of chunks, read as the client takes them.
pub fn file_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), file)))
    })
}
