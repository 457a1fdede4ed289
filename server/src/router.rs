//! Builds the axum app of one listener from the APIs it serves.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, Method, Version},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tower_http::{
    catch_panic::CatchPanicLayer,
    classify::{ServerErrorsAsFailures, SharedClassifier},
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};
use tracing::Span;

use crate::{api, config::Api, error::MatrixError, state::AppState};

pub fn build(state: AppState, apis: &[Api]) -> Router {
    let mut router = Router::new();
    if apis.contains(&Api::Client) {
        router = router.merge(api::client::router());
    }
    if apis.contains(&Api::Media) {
        router = router.merge(api::media::router());
    }
    if apis.contains(&Api::Admin) {
        router = router.merge(api::admin::router());
    }
    if apis.contains(&Api::Client) {
        router = router.route("/health", axum::routing::get(health));
    }
    if apis.contains(&Api::Metrics) {
        router = router.merge(crate::metrics::router());
    }
    if apis.contains(&Api::Federation) {
        router = router.merge(weft_federation::router());
    } else if apis.contains(&Api::Keys) {
        router = router.merge(weft_federation::keys_router());
    }
    router
        .fallback(|| async { MatrixError::unrecognized("Unrecognized request") })
        .method_not_allowed_fallback(|| async { MatrixError::unrecognized_method() })
        .layer(CatchPanicLayer::custom(|_| {
            MatrixError::unknown("Internal server error").into_response()
        }))
        .layer(cors())
        .layer(middleware::from_fn(close_if_body_unread))
        .layer(middleware::from_fn(crate::metrics::record_request))
        .layer(access_log())
        .layer(middleware::from_fn(crate::logging::request_id))
        .with_state(state)
}

/// # `GET /health`
///
/// `OK` while the server runs, for load balancers and container health checks (Synapse
/// answers the same).
async fn health() -> &'static str {
    "OK"
}

/// One `info` line per request once answered, as Synapse logs: method, path (without an
/// access token), status, duration, and the user once authentication named them (on the
/// request's span, which every line logged while handling the request carries too, with the
/// request's ID).
fn access_log() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    impl Fn(&Request) -> Span + Clone,
    (),
    impl Fn(&Response, Duration, &Span) + Clone,
> {
    TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let id = req
                .extensions()
                .get::<crate::logging::RequestId>()
                .map(|id| id.0.as_str())
                .unwrap_or_default();
            tracing::info_span!(
                "request",
                request_id = id,
                method = %req.method(),
                path = %loggable_path(req.uri()),
                user = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(|res: &Response, latency: Duration, _: &Span| {
            tracing::info!(
                status = res.status().as_u16(),
                duration_ms = latency.as_millis() as u64,
                "answered"
            );
        })
}

/// The request's path and query without the `access_token` parameter.
fn loggable_path(uri: &http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some("access_token"))
        .collect();
    if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    }
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
