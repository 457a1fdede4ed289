//! Other servers' media for local clients: fetched once over federation and kept in the media
//! store (`remote_media`), served from there afterwards.
//!
//! The authenticated endpoint (`/_matrix/federation/v1/media/download`) is asked first; a
//! server that does not know it (404 `M_UNRECOGNIZED`, or 400) is asked on the legacy
//! unauthenticated one (`/_matrix/media/v3/download/...?allow_remote=false`). The answer is
//! read only up to the configured `max_upload_size` (plus room for the multipart framing):
//! longer media is refused as it arrives, and nothing of it is kept. Concurrent requests for
//! the same media wait for one fetch.
//!
//! A thumbnail is asked of the media's server first (`/_matrix/federation/v1/media/thumbnail`)
//! and kept as it answers (`remote_thumbnail`), so that a picture is not fetched whole for a
//! preview; a server that gives none leaves the caller to fetch the original and thumbnail it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    api::federation::authenticated_media::{get_content, get_content_thumbnail, FileOrLocation},
    http_headers::ContentDisposition,
    ServerName, UInt,
};
use weft_core::media::{
    store::ThumbnailRecord,
    thumbnail::{Method, Spec},
    MediaError, MediaRecord, MediaResult, Repo,
};

use crate::{client::FederationError, Federation};

/// How long a fetch of remote media may take, whatever the client's `timeout_ms`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Room for a multipart answer's boundaries, headers and JSON part besides the file.
const FRAMING: usize = 64 * 1024;

/// Fetches under way, one lock per (origin, media ID), so that concurrent requests for the
/// same media fetch it once.
#[derive(Default)]
pub struct Fetches {
    inflight: Mutex<HashMap<(String, String), Turn>>,
}

/// Held by the request fetching one media; the others wait for it.
type Turn = Arc<tokio::sync::Mutex<()>>;

impl Fetches {
    fn lock_for(&self, origin: &str, media_id: &str) -> Turn {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((origin.to_owned(), media_id.to_owned())).or_default().clone()
    }

    fn done(&self, origin: &str, media_id: &str) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(origin.to_owned(), media_id.to_owned()));
    }
}

/// Another server's media as kept here, fetched first if it is not.
pub async fn remote(fed: &Federation, repo: &Repo, origin: &ServerName, media_id: &str) -> MediaResult<MediaRecord> {
    if let Some(kept) = repo.remote(origin.as_str(), media_id).await? {
        return Ok(kept);
    }
    let lock = fed.media_fetches.lock_for(origin.as_str(), media_id);
    let _turn = lock.lock().await;
    // Whoever held the turn before may have kept it meanwhile.
    if let Some(kept) = repo.remote(origin.as_str(), media_id).await? {
        return Ok(kept);
    }
    let result = fetch_and_keep(fed, repo, origin, media_id).await;
    fed.media_fetches.done(origin.as_str(), media_id);
    result
}

/// A thumbnail of another server's media, asked of that server and kept (a kept one is
/// answered without asking); `None` when that server gives none (it lacks the endpoint,
/// refuses, is unreachable, or answers something that is not an image), so that the caller
/// makes one from the original.
pub async fn remote_thumbnail(
    fed: &Federation,
    repo: &Repo,
    origin: &ServerName,
    media_id: &str,
    spec: Spec,
) -> MediaResult<Option<ThumbnailRecord>> {
    if let Some(kept) = repo.fetched_thumbnail(origin.as_str(), media_id, spec).await? {
        return Ok(Some(kept));
    }
    let limit = usize::try_from(repo.settings.max_upload_size).unwrap_or(usize::MAX);
    let mut request =
        get_content_thumbnail::v1::Request::new(media_id.to_owned(), UInt::from(spec.width), UInt::from(spec.height));
    request.method = Some(match spec.method {
        Method::Scale => ruma::media::Method::Scale,
        Method::Crop => ruma::media::Method::Crop,
    });
    request.animated = Some(spec.animated);
    let bytes = match fed
        .client
        .send_capped(origin, request, FETCH_TIMEOUT, limit.saturating_add(FRAMING))
        .await
    {
        Ok(response) => match response.content {
            FileOrLocation::File(content) => content.file,
            FileOrLocation::Location(url) => match fed.client.get_url(origin, &url, FETCH_TIMEOUT, limit).await {
                Ok((_, bytes)) => bytes,
                Err(e) => {
                    tracing::debug!(%origin, media_id, error = %e, "no thumbnail at the location given");
                    return Ok(None);
                }
            },
            _ => return Ok(None),
        },
        Err(e) => {
            tracing::debug!(%origin, media_id, error = %e, "no thumbnail from the media's server");
            return Ok(None);
        }
    };
    let kept = repo
        .keep_fetched_thumbnail(origin.as_str(), media_id, spec, &bytes)
        .await?;
    if kept.is_none() {
        tracing::info!(%origin, media_id, "a fetched thumbnail is not an image; making one here");
    }
    Ok(kept)
}

/// What a remote server answered for a download.
struct Fetched {
    bytes: Vec<u8>,
    content_type: Option<String>,
    filename: Option<String>,
}

async fn fetch_and_keep(
    fed: &Federation,
    repo: &Repo,
    origin: &ServerName,
    media_id: &str,
) -> MediaResult<MediaRecord> {
    let limit = usize::try_from(repo.settings.max_upload_size).unwrap_or(usize::MAX);
    let fetched = fetch(fed, origin, media_id, limit).await?;
    let mut upload = repo.begin_remote().await?;
    upload.write(&fetched.bytes).await.map_err(|e| match e {
        MediaError::TooLarge(_) => too_large(origin, limit),
        other => other,
    })?;
    tracing::info!(%origin, media_id, size = fetched.bytes.len(), "fetched remote media");
    repo.finish_remote(
        origin.as_str(),
        media_id,
        upload,
        fetched.content_type.as_deref(),
        fetched.filename.as_deref(),
    )
    .await
}

/// Downloads media from its server: the authenticated endpoint, else the legacy one.
async fn fetch(fed: &Federation, origin: &ServerName, media_id: &str, limit: usize) -> MediaResult<Fetched> {
    let request = get_content::v1::Request::new(media_id.to_owned());
    let cap = limit.saturating_add(FRAMING);
    match fed.client.send_capped(origin, request, FETCH_TIMEOUT, cap).await {
        Ok(response) => match response.content {
            FileOrLocation::File(content) => Ok(Fetched {
                filename: content.content_disposition.and_then(|d| d.filename),
                content_type: content.content_type,
                bytes: content.file,
            }),
            FileOrLocation::Location(url) => {
                let (headers, bytes) = fed
                    .client
                    .get_url(origin, &url, FETCH_TIMEOUT, limit)
                    .await
                    .map_err(|e| media_error(e, origin, limit))?;
                Ok(from_headers(&headers, bytes))
            }
            _ => Err(MediaError::Upstream(format!(
                "{origin} answered a kind of content this server does not know"
            ))),
        },
        Err(e) if lacks_endpoint(&e) => {
            tracing::debug!(%origin, error = %e, "no authenticated media download; trying the legacy one");
            let path = format!(
                "/_matrix/media/v3/download/{}/{}?allow_remote=false",
                encode(origin.as_str()),
                encode(media_id)
            );
            let (headers, bytes) = fed
                .client
                .get_unsigned(origin, &path, FETCH_TIMEOUT, limit)
                .await
                .map_err(|e| media_error(e, origin, limit))?;
            Ok(from_headers(&headers, bytes))
        }
        Err(e) => Err(media_error(e, origin, limit)),
    }
}

/// A server that does not serve the authenticated media endpoints answers an unknown
/// endpoint (Synapse before 1.111: 404 `M_UNRECOGNIZED`; others 400 or 405).
fn lacks_endpoint(e: &FederationError) -> bool {
    matches!(
        (e.status(), e.errcode()),
        (Some(404), Some("M_UNRECOGNIZED")) | (Some(400 | 405 | 501), _)
    )
}

fn from_headers(headers: &http::HeaderMap, bytes: Vec<u8>) -> Fetched {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let filename = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|v| ContentDisposition::try_from(v.as_bytes()).ok())
        .and_then(|d| d.filename);
    Fetched {
        bytes,
        content_type,
        filename,
    }
}

fn media_error(e: FederationError, origin: &ServerName, limit: usize) -> MediaError {
    match (&e, e.status()) {
        (FederationError::TooLarge { .. }, _) => too_large(origin, limit),
        (_, Some(404)) => MediaError::NotFound(format!("Media not found on {origin}")),
        _ => MediaError::Upstream(format!("Cannot fetch media from {origin}: {e}")),
    }
}

fn too_large(origin: &ServerName, limit: usize) -> MediaError {
    MediaError::RemoteTooLarge(format!(
        "Media on {origin} is larger than this server fetches ({limit} bytes)"
    ))
}

/// Percent-encodes a path segment (media IDs are `[A-Za-z0-9_-]` by the spec, but another
/// server's are not ours to trust).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
