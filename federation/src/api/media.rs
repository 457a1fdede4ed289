//! `/_matrix/federation/v1/media/download/{mediaId}` and `/media/thumbnail/{mediaId}`: this
//! server's own media for other servers, as `multipart/mixed` answers (a JSON part, then the
//! file), streamed from the store. Logic lives in `weft_core::media`.

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderValue},
    response::Response,
    routing::get,
    Router,
};
use futures::StreamExt;
use ruma::{
    api::{federation::authenticated_media as fed_media, path_builder::PathBuilder, Metadata},
    http_headers::{ContentDisposition, ContentDispositionType},
};
use weft_core::media::{
    thumbnail::{Spec, Thumbnail},
    MediaRecord, Repo,
};
use weft_http::{
    error::ApiResult,
    media::{file_stream, repo},
    ruma_wrapper::Ruma,
    state::AppState,
};

use super::origin;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let download_path = <fed_media::get_content::v1::Request as Metadata>::PATH_BUILDER.all_paths();
    let thumbnail_path = <fed_media::get_content_thumbnail::v1::Request as Metadata>::PATH_BUILDER.all_paths();
    let router = download_path.fold(router, |r, path| r.route(path, get(download)));
    thumbnail_path.fold(router, |r, path| r.route(path, get(thumbnail)))
}

/// # `GET /_matrix/federation/v1/media/download/{mediaId}`
async fn download(
    State(state): State<AppState>,
    req: Ruma<fed_media::get_content::v1::Request>,
) -> ApiResult<Response> {
    origin(&req)?;
    let repo = repo(&state);
    let record = repo
        .uploaded(state.core.server_name.as_str(), &req.media_id, req.timeout_ms)
        .await?;
    let file = repo.open(&record).await?;
    Ok(multipart(file, content_type(&record), record.filename.clone()))
}

/// # `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
async fn thumbnail(
    State(state): State<AppState>,
    req: Ruma<fed_media::get_content_thumbnail::v1::Request>,
) -> ApiResult<Response> {
    origin(&req)?;
    let spec = Spec::from_request(req.width.into(), req.height.into(), req.method.as_ref(), req.animated)?;
    let repo: Repo = repo(&state);
    let record = repo
        .uploaded(state.core.server_name.as_str(), &req.media_id, req.timeout_ms)
        .await?;
    match repo.thumbnail(&record, spec).await? {
        Thumbnail::Stored(thumb) => {
            let file = repo.open_blob(&thumb.sha256).await?;
            Ok(multipart(file, &thumb.content_type, None))
        }
        Thumbnail::Original => {
            let file = repo.open(&record).await?;
            Ok(multipart(file, content_type(&record), None))
        }
    }
}

fn content_type(record: &MediaRecord) -> &str {
    record.content_type.as_deref().unwrap_or("application/octet-stream")
}

/// The spec's answer: `multipart/mixed` with the (empty) metadata as JSON, then the file
/// with its type and disposition, streamed as it is read.
fn multipart(file: tokio::fs::File, content_type: &str, filename: Option<String>) -> Response {
    let boundary = weft_core::util::random_string(32);
    // A header value that is not one (a stored type with a line break, say) is sent as bytes.
    let content_type = if HeaderValue::from_str(content_type).is_ok() {
        content_type
    } else {
        "application/octet-stream"
    };
    let disposition =
        ContentDisposition::new(ContentDispositionType::Attachment).with_filename(filename.filter(|f| !f.is_empty()));
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let body = futures::stream::once(async move { Ok(bytes::Bytes::from(head)) })
        .chain(file_stream(file))
        .chain(futures::stream::once(async move { Ok(bytes::Bytes::from(tail)) }));
    let mut response = Response::new(Body::from_stream(body));
    let value = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
        .expect("a random alphanumeric boundary is a valid header value");
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}
