//! Builds the axum app of one listener from the APIs it serves.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, Method, Version},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use serde_json::json;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{api, config::Api, error::MatrixError, state::AppState};

pub fn build(state: AppState, apis: &[Api]) -> Router {
    let mut router = Router::new();
    if apis.contains(&Api::Client) {
        router = router
            .merge(api::client::router())
            .route("/.well-known/matrix/server", get(server_well_known));
    }
    if apis.contains(&Api::Media) {
        router = router.merge(api::media::router());
    }
    if apis.contains(&Api::Admin) {
        router = router.merge(api::admin::router());
    }
    router
        .fallback(|| async { MatrixError::unrecognized("Unrecognized request") })
        .method_not_allowed_fallback(|| async { MatrixError::unrecognized_method() })
        .layer(CatchPanicLayer::custom(|_| {
            MatrixError::unknown("Internal server error").into_response()
        }))
        .layer(cors())
        .layer(middleware::from_fn(close_if_body_unread))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Element Web runs on another origin; it needs these CORS answers on every endpoint.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::DATE,
        ])
}

async fn server_well_known(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let server = &state.config.server_name;
    // A server name without a port delegates to port 443 of the same host.
    let delegated = if server.contains(':') && !server.ends_with(']') {
        server.clone()
    } else {
        format!("{server}:443")
    };
    Json(json!({ "m.server": delegated }))
}

/// A handler that answers without reading the request's body (a fallback, an endpoint that
/// takes none) leaves the body on the connection, which hyper then closes after the response.
/// The client is told (`Connection: close`), or it could send its next request on a connection
/// about to close and see it fail.
async fn close_if_body_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() || req.version() > Version::HTTP_11 {
        return next.run(req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(Tracked {
            inner: body,
            read: read.clone(),
        })
    });
    let mut res = next.run(req).await;
    if !read.load(Ordering::Relaxed) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A request body that records when it was read to the end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
