//! The media repository API: uploads (`/_matrix/media/v3/upload`, `/v1/create`), the
//! authenticated `/_matrix/client/v1/media/*` endpoints and the legacy `/_matrix/media/v3/*`
//! ones. Logic lives in `weft_core::media`.
//!
//! Uploads are streamed to disk (never held in memory whole) and files are streamed back.
//! Another server's media is fetched over federation the first time it is asked for and kept
//! (`weft_federation::media`). Its thumbnails are asked of its server and kept while its
//! original is not here, and made here from the original once it is (or when its server gives
//! none).

// The legacy `/_matrix/media/v3/*` endpoints are deprecated since Matrix 1.11 but still served.
#![allow(deprecated)]

use std::{future::Future, time::Duration};

use axum::{
    body::Body,
    extract::{FromRequestParts, Path, Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use futures::StreamExt;
use ruma::{
    api::{
        client::{authenticated_media as v1, media as legacy},
        path_builder::PathBuilder,
        IncomingRequest, IncomingRequestExt,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, ServerName, UInt,
};
use weft_core::media::{
    thumbnail::{Spec, Thumbnail},
    MediaRecord, Repo, Target, Upload,
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{authenticate, AuthRequirement, AuthUser, Ruma, RumaResponse, RumaRoute},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    let router = Router::new()
        .ruma(create_mxc)
        .ruma(config_v1)
        .ruma(config_legacy)
        .ruma(preview_v1)
        .ruma(preview_legacy);
    let router = upload_route::<legacy::create_content::v3::Request, _, _>(router, upload_new);
    let router = upload_route::<legacy::create_content_async::v3::Request, _, _>(router, upload_pending);
    let router = raw_route(router, download_v1);
    let router = raw_route(router, download_as_v1);
    let router = raw_route(router, thumbnail_v1);
    let router = raw_route(router, download_legacy);
    let router = raw_route(router, download_as_legacy);
    raw_route(router, thumbnail_legacy)
}

use crate::media::{file_stream, repo};

fn mxc(state: &AppState, media_id: &str) -> OwnedMxcUri {
    OwnedMxcUri::from(format!("mxc://{}/{media_id}", state.core.server_name))
}

// ----- Uploads -----

/// Mounts an upload handler on every path of `Req`. Uploads bypass `Ruma<T>` so that the
/// body is streamed to disk instead of buffered.
fn upload_route<Req, F, Fut>(mut router: Router<AppState>, handler: F) -> Router<AppState>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthRequirement,
    F: Fn(AppState, Req, AuthUser, Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult<Response>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
    for path in Req::PATH_BUILDER.all_paths() {
        let handler = handler.clone();
        router = router.route(
            path,
            on(filter, move |State(state): State<AppState>, req: Request| async move {
                let (mut parts, body) = req.into_parts();
                let (parsed, user) = parse_head::<Req>(&state, &mut parts).await?;
                handler(state, parsed, user, Request::from_parts(parts, body)).await
            }),
        );
    }
    router
}

/// Authenticates, rate limits and parses an upload's path, query and headers with ruma,
/// leaving its body unread.
async fn parse_head<Req>(state: &AppState, parts: &mut http::request::Parts) -> ApiResult<(Req, AuthUser)>
where
    Req: IncomingRequest,
    Req::Authentication: AuthRequirement,
{
    let args: Vec<String> = Path::<Vec<String>>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .unwrap_or_default();
    let user = authenticate(state, parts, Req::Authentication::NEED)
        .await?
        .ok_or_else(|| MatrixError::missing_token("Missing access token"))?;
    if Req::RATE_LIMITED && !user.is_admin {
        state
            .rate_limiter
            .check(user.user_id.as_str())
            .map_err(MatrixError::limit_exceeded)?;
    }
    let mut head = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone());
    for (name, value) in &parts.headers {
        head = head.header(name, value);
    }
    let head = head
        .body(&[][..])
        .map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed =
        Req::try_from_http_request(head, &args).map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))?;
    Ok((parsed, user))
}

/// `POST /_matrix/media/v3/upload`.
async fn upload_new(
    state: AppState,
    req: legacy::create_content::v3::Request,
    user: AuthUser,
    http: Request,
) -> ApiResult<Response> {
    let repo = repo(&state);
    let upload = receive(&repo, &user, http).await?;
    let media_id = repo
        .finish_upload(
            user.user_id.as_str(),
            upload,
            Target::New,
            req.content_type.as_deref(),
            req.filename.as_deref(),
        )
        .await?;
    Ok(RumaResponse(legacy::create_content::v3::Response::new(mxc(&state, &media_id))).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: content for a `/create` ID.
async fn upload_pending(
    state: AppState,
    req: legacy::create_content_async::v3::Request,
    user: AuthUser,
    http: Request,
) -> ApiResult<Response> {
    let repo = repo(&state);
    // Refused before any byte is read: someone else's ID, already uploaded, expired.
    repo.check_pending(req.server_name.as_str(), &req.media_id, user.user_id.as_str())
        .await?;
    let upload = receive(&repo, &user, http).await?;
    repo.finish_upload(
        user.user_id.as_str(),
        upload,
        Target::Pending(&req.media_id),
        req.content_type.as_deref(),
        req.filename.as_deref(),
    )
    .await?;
    // ruma's response type here is an empty struct without a public constructor.
    Ok(axum::Json(serde_json::json!({})).into_response())
}

/// Streams the body into a temporary file. A body cut short (the connection dropped before
/// Content-Length bytes came) is an error, and the temporary file goes away with it.
async fn receive(repo: &Repo, user: &AuthUser, http: Request) -> ApiResult<Upload> {
    let announced = http
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    repo.check_upload_size(user.user_id.as_str(), announced).await?;
    let mut upload = repo.begin_upload().await?;
    let mut body = http.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            MatrixError::unknown(format!("Upload interrupted: {e}")).with_status(StatusCode::BAD_REQUEST)
        })?;
        upload.write(&chunk).await?;
    }
    Ok(upload)
}

/// `POST /_matrix/media/v1/create`.
async fn create_mxc(
    state: AppState,
    req: Ruma<legacy::create_mxc_uri::v1::Request>,
) -> ApiResult<legacy::create_mxc_uri::v1::Response> {
    let user = req.sender()?;
    let (media_id, expires) = repo(&state).create_pending(user.user_id.as_str()).await?;
    let mut res = legacy::create_mxc_uri::v1::Response::new(mxc(&state, &media_id));
    res.unused_expires_at = UInt::try_from(expires).ok().map(MilliSecondsSinceUnixEpoch);
    Ok(res)
}

// ----- Config and previews -----

fn upload_size(state: &AppState) -> UInt {
    UInt::try_from(state.config.media.max_upload_size as u64).unwrap_or(UInt::MAX)
}

async fn config_v1(
    state: AppState,
    _req: Ruma<v1::get_media_config::v1::Request>,
) -> ApiResult<v1::get_media_config::v1::Response> {
    Ok(v1::get_media_config::v1::Response::new(upload_size(&state)))
}

async fn config_legacy(
    state: AppState,
    _req: Ruma<legacy::get_media_config::v3::Request>,
) -> ApiResult<legacy::get_media_config::v3::Response> {
    Ok(legacy::get_media_config::v3::Response::new(upload_size(&state)))
}

async fn preview(state: &AppState, user: &AuthUser, url: &str) -> ApiResult<serde_json::Value> {
    if !state.config.media.url_preview_enabled {
        // As Synapse: the endpoint does not exist while previews are off.
        return Err(MatrixError::unrecognized("URL previews are disabled on this server"));
    }
    Ok(repo(state).preview_url(user.user_id.as_str(), url).await?)
}

async fn preview_v1(
    state: AppState,
    req: Ruma<v1::get_media_preview::v1::Request>,
) -> ApiResult<v1::get_media_preview::v1::Response> {
    let og = preview(&state, req.sender()?, &req.url).await?;
    v1::get_media_preview::v1::Response::from_serialize(&og).map_err(|e| MatrixError::unknown(e.to_string()))
}

async fn preview_legacy(
    state: AppState,
    req: Ruma<legacy::get_media_preview::v3::Request>,
) -> ApiResult<legacy::get_media_preview::v3::Response> {
    let og = preview(&state, req.sender()?, &req.url).await?;
    legacy::get_media_preview::v3::Response::from_serialize(&og).map_err(|e| MatrixError::unknown(e.to_string()))
}

// ----- Downloads and thumbnails -----

/// Mounts a handler answering with its own `Response` (a file) on every path of `Req`.
fn raw_route<Req, F, Fut>(mut router: Router<AppState>, handler: F) -> Router<AppState>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthRequirement,
    F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResult<Response>> + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
    for path in Req::PATH_BUILDER.all_paths() {
        let handler = handler.clone();
        router = router.route(
            path,
            on(
                filter,
                move |State(state): State<AppState>, req: Ruma<Req>| async move { handler(state, req).await },
            ),
        );
    }
    router
}

/// Which family of endpoints a download came through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Authenticated,
    /// `/_matrix/media/v3/*`: no access token; refuses media uploaded under authenticated media.
    Legacy,
}

/// Where a download may look: the legacy endpoints' `allow_remote=false` keeps a request from
/// fetching another server's media (answering only what is kept here).
#[derive(Clone, Copy)]
struct Lookup {
    timeout: Duration,
    api: Api,
    allow_remote: bool,
}

/// Finds uploaded media for a download through `api`: local media, or another server's, kept
/// here or fetched now.
async fn find(
    state: &AppState,
    repo: &Repo,
    server_name: &ServerName,
    media_id: &str,
    look: Lookup,
) -> ApiResult<MediaRecord> {
    if !repo.is_local(server_name.as_str()) {
        // As Synapse: with authenticated media on, media fetched from other servers is
        // authenticated-only too.
        if look.api == Api::Legacy && repo.settings.enable_authenticated_media {
            return Err(MatrixError::not_found(
                "Media not found (use the authenticated media endpoints)",
            ));
        }
        if let Some(kept) = repo.remote(server_name.as_str(), media_id).await? {
            return Ok(kept);
        }
        if !look.allow_remote || !state.config.federation.enabled {
            return Err(MatrixError::not_found("Media not found"));
        }
        let fed = weft_federation::of(state)?;
        return Ok(weft_federation::media::remote(fed, repo, server_name, media_id).await?);
    }
    let record = repo.uploaded(server_name.as_str(), media_id, look.timeout).await?;
    if look.api == Api::Legacy && repo.settings.enable_authenticated_media && record.authenticated {
        return Err(MatrixError::not_found(
            "Media not found (use the authenticated media endpoints)",
        ));
    }
    Ok(record)
}

async fn download(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    filename: Option<String>,
    look: Lookup,
) -> ApiResult<Response> {
    let api = look.api;
    let repo = repo(state);
    let record = find(state, &repo, server_name, media_id, look).await?;
    let file = repo.open(&record).await?;
    let content_type = record.content_type.as_deref().unwrap_or("application/octet-stream");
    let filename = filename.or(record.filename.clone());
    Ok(file_response(file, record.size as u64, content_type, filename, api))
}

async fn download_v1(state: AppState, req: Ruma<v1::get_content::v1::Request>) -> ApiResult<Response> {
    download(
        &state,
        &req.server_name,
        &req.media_id,
        None,
        Lookup {
            timeout: req.timeout_ms,
            api: Api::Authenticated,
            allow_remote: true,
        },
    )
    .await
}

async fn download_as_v1(state: AppState, req: Ruma<v1::get_content_as_filename::v1::Request>) -> ApiResult<Response> {
    let name = Some(req.filename.clone());
    download(
        &state,
        &req.server_name,
        &req.media_id,
        name,
        Lookup {
            timeout: req.timeout_ms,
            api: Api::Authenticated,
            allow_remote: true,
        },
    )
    .await
}

async fn download_legacy(state: AppState, req: Ruma<legacy::get_content::v3::Request>) -> ApiResult<Response> {
    download(
        &state,
        &req.server_name,
        &req.media_id,
        None,
        Lookup {
            timeout: req.timeout_ms,
            api: Api::Legacy,
            allow_remote: req.allow_remote,
        },
    )
    .await
}

async fn download_as_legacy(
    state: AppState,
    req: Ruma<legacy::get_content_as_filename::v3::Request>,
) -> ApiResult<Response> {
    let name = Some(req.filename.clone());
    download(
        &state,
        &req.server_name,
        &req.media_id,
        name,
        Lookup {
            timeout: req.timeout_ms,
            api: Api::Legacy,
            allow_remote: req.allow_remote,
        },
    )
    .await
}

/// The parts of a thumbnail request both endpoint families share.
struct ThumbnailQuery<'a> {
    server_name: &'a ServerName,
    media_id: &'a str,
    width: UInt,
    height: UInt,
    method: Option<&'a ruma::media::Method>,
    animated: Option<bool>,
    timeout: Duration,
    allow_remote: bool,
}

async fn thumbnail(state: &AppState, q: ThumbnailQuery<'_>, api: Api) -> ApiResult<Response> {
    let spec = Spec::from_request(q.width.into(), q.height.into(), q.method, q.animated)?;
    let repo = repo(state);
    let look = Lookup {
        timeout: q.timeout,
        api,
        allow_remote: q.allow_remote,
    };
    if let Some(thumb) = remote_thumbnail(state, &repo, &q, spec, look).await? {
        let file = repo.open_blob(&thumb.sha256).await?;
        return Ok(file_response(file, thumb.size as u64, &thumb.content_type, None, api));
    }
    let record = find(state, &repo, q.server_name, q.media_id, look).await?;
    match repo.thumbnail(&record, spec).await? {
        Thumbnail::Stored(thumb) => {
            let file = repo.open_blob(&thumb.sha256).await?;
            Ok(file_response(file, thumb.size as u64, &thumb.content_type, None, api))
        }
        Thumbnail::Original => {
            let file = repo.open(&record).await?;
            let content_type = record.content_type.as_deref().unwrap_or("application/octet-stream");
            Ok(file_response(file, record.size as u64, content_type, None, api))
        }
    }
}

/// A thumbnail of another server's media whose original is not kept here: one fetched from
/// its server before, or now. `None` for local media, media whose original is kept (its
/// thumbnails are made here), and when the server gives none: then the original is fetched.
async fn remote_thumbnail(
    state: &AppState,
    repo: &Repo,
    q: &ThumbnailQuery<'_>,
    spec: Spec,
    look: Lookup,
) -> ApiResult<Option<weft_core::media::store::ThumbnailRecord>> {
    let origin = q.server_name.as_str();
    // The legacy endpoints' refusal of remote media is `find`'s to answer.
    if repo.is_local(origin) || (look.api == Api::Legacy && repo.settings.enable_authenticated_media) {
        return Ok(None);
    }
    if repo.remote(origin, q.media_id).await?.is_some() {
        return Ok(None);
    }
    if let Some(kept) = repo.fetched_thumbnail(origin, q.media_id, spec).await? {
        return Ok(Some(kept));
    }
    if !look.allow_remote || !state.config.federation.enabled {
        return Ok(None);
    }
    let fed = weft_federation::of(state)?;
    Ok(weft_federation::media::remote_thumbnail(fed, repo, q.server_name, q.media_id, spec).await?)
}

async fn thumbnail_v1(state: AppState, req: Ruma<v1::get_content_thumbnail::v1::Request>) -> ApiResult<Response> {
    let q = ThumbnailQuery {
        server_name: &req.server_name,
        media_id: &req.media_id,
        width: req.width,
        height: req.height,
        method: req.method.as_ref(),
        animated: req.animated,
        timeout: req.timeout_ms,
        allow_remote: true,
    };
    thumbnail(&state, q, Api::Authenticated).await
}

async fn thumbnail_legacy(
    state: AppState,
    req: Ruma<legacy::get_content_thumbnail::v3::Request>,
) -> ApiResult<Response> {
    let q = ThumbnailQuery {
        server_name: &req.server_name,
        media_id: &req.media_id,
        width: req.width,
        height: req.height,
        method: req.method.as_ref(),
        animated: req.animated,
        timeout: req.timeout_ms,
        allow_remote: req.allow_remote,
    };
    thumbnail(&state, q, Api::Legacy).await
}

/// Content that a browser must never run as part of the homeserver's origin.
const MEDIA_CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                         style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// A stored file as a response, with the headers that make serving user content safe:
/// `inline` only for the spec's safe types, `attachment` otherwise, a sandboxing CSP, and no
/// content sniffing.
fn file_response(file: tokio::fs::File, size: u64, content_type: &str, filename: Option<String>, api: Api) -> Response {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let disposition_type = if ruma::api::client::media::is_safe_inline_content_type(&essence) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition =
        ContentDisposition::new(disposition_type.clone()).with_filename(filename.filter(|f| !f.is_empty()));
    let disposition = HeaderValue::from_str(&disposition.to_string()).unwrap_or_else(|_| {
        HeaderValue::from_str(&ContentDisposition::new(disposition_type).to_string()).expect("a bare type is valid")
    });
    let content_type =
        HeaderValue::from_str(content_type).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    // Media never changes once uploaded; authenticated media is not for shared caches.
    let cache = match api {
        Api::Authenticated => "private, max-age=86400",
        Api::Legacy => "public, max-age=86400",
    };
    let mut response = Response::new(Body::from_stream(file_stream(file)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(MEDIA_CSP));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
