//! Prometheus metrics: the exporter behind core's `metrics` facade, the `/metrics` endpoint of
//! a listener that serves `metrics`, and the HTTP request metrics every listener records.
//!
//! The exporter is the process's global recorder, installed when the first server with a
//! metrics listener starts; until then (and in a server without one) recording costs nothing.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, Method},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::state::AppState;

/// Histogram buckets (seconds): Prometheus's client defaults, which Synapse's histograms use.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

struct Exporter {
    handle: PrometheusHandle,
    /// The process collector (memory, CPU, threads, open files), read at each scrape.
    process: Mutex<metrics_process::Collector>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// The exporter, installed as the global recorder on first use.
fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will show only what it leaves");
        }
        let process = metrics_process::Collector::default();
        process.describe();
        Exporter {
            handle,
            process: Mutex::new(process),
        }
    })
}

/// Installs the exporter (once per process) and keeps its histograms folded until `stop`.
pub fn install(mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let handle = exporter().handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    })
}

/// The routes of a listener that serves `metrics`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/_synapse/metrics", get(scrape))
}

/// # `GET /metrics` (also `/_synapse/metrics`, where Synapse serves them)
///
/// Everything recorded so far, in Prometheus's text format; the gauges that are read rather
/// than counted (pool, caches, federation queue, process) are read now.
async fn scrape(State(state): State<AppState>) -> Response {
    let exporter = exporter();
    weft_core::metrics::record_gauges(&state.core);
    if let Err(e) = weft_core::metrics::record_federation_queue(&state.core).await {
        tracing::warn!(error = %e, "metrics: cannot read the federation queue's depth");
    }
    exporter.process.lock().unwrap_or_else(|e| e.into_inner()).collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        exporter.handle.render(),
    )
        .into_response()
}

/// Records each request as Synapse does: requests received and in flight per method and
/// servlet, responses per method and status code, response time per servlet and code. The
/// servlet is the route's path template (`/_matrix/client/v3/rooms/{roomId}/send/...`), so
/// that room and user IDs never become label values; unrouted requests share one.
pub async fn record_request(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let servlet = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unrecognised".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    counter!("synapse_http_server_requests_received_total", "method" => method, "servlet" => servlet.clone())
        .increment(1);
    let in_flight =
        gauge!("synapse_http_server_in_flight_requests_count", "method" => method, "servlet" => servlet.clone());
    in_flight.increment(1.0);
    // Counted out also when the client goes away and the handler is dropped.
    let _in_flight = scopeguard(move || in_flight.decrement(1.0));
    let res = next.run(req).await;
    let code = res.status().as_u16().to_string();
    counter!("synapse_http_server_responses_total", "method" => method, "code" => code.clone()).increment(1);
    histogram!(
        "synapse_http_server_response_time_seconds",
        "method" => method, "servlet" => servlet, "code" => code
    )
    .record(started.elapsed().as_secs_f64());
    res
}

/// The method as a label: the standard ones by name, anything else as one value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
