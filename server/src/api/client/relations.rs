//! `/rooms/{roomId}/relations/...` (events relating to a parent) and `/rooms/{roomId}/threads`.

use axum::Router;
use ruma::{
    api::{
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
        Direction,
    },
    serde::Raw,
    UInt,
};
use serde_json::Value;
use weft_core::rooms::{
    client_format::Viewer,
    relations::{self, RelationsPage, RelationsQuery, ThreadsQuery},
    timeline::Dir,
};

use crate::{
    error::ApiResult,
    ruma_wrapper::{AuthUser, Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(relating)
        .ruma(relating_with_rel_type)
        .ruma(relating_with_rel_type_and_event_type)
        .ruma(threads)
}

const DEFAULT_LIMIT: u64 = 30;
const MAX_RELATIONS_LIMIT: u64 = 1000;
const MAX_THREADS_LIMIT: u64 = 100;

fn limit(requested: Option<UInt>, max: u64) -> usize {
    requested.map(u64::from).unwrap_or(DEFAULT_LIMIT).clamp(1, max) as usize
}

fn dir(d: &Direction) -> Dir {
    match d {
        Direction::Backward => Dir::Backward,
        Direction::Forward => Dir::Forward,
    }
}

fn viewer(user: &AuthUser) -> Viewer<'_> {
    Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    }
}

fn raw_list<T>(values: Vec<Value>) -> Vec<Raw<T>> {
    values
        .into_iter()
        .filter_map(|v| Raw::from_json_string(v.to_string()).ok())
        .collect()
}

async fn page(state: &AppState, user: &AuthUser, q: RelationsQuery<'_>) -> ApiResult<RelationsPage> {
    let mut conn = state.db.conn().await?;
    Ok(relations::relating_events(&state.core, &mut conn, viewer(user), &q).await?)
}

/// The parts every `/relations` response shares.
struct Parts<T> {
    chunk: Vec<Raw<T>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

fn parts<T>(page: RelationsPage) -> Parts<T> {
    Parts {
        chunk: raw_list(page.chunk),
        next_batch: page.next_batch,
        prev_batch: page.prev_batch,
        recursion_depth: page.recursion_depth.and_then(|d| UInt::try_from(d).ok()),
    }
}

/// The three `/relations` endpoints differ only in which filters their path carries.
macro_rules! relations_handler {
    ($name:ident, $endpoint:ident, |$req:ident| ($rel_type:expr, $event_type:expr)) => {
        pub async fn $name(state: AppState, $req: Ruma<$endpoint::v1::Request>) -> ApiResult<$endpoint::v1::Response> {
            let user = $req.sender()?;
            let (rel_type, event_type): (Option<String>, Option<String>) = ($rel_type, $event_type);
            let q = RelationsQuery {
                room_id: $req.room_id.as_str(),
                event_id: $req.event_id.as_str(),
                rel_type: rel_type.as_deref(),
                event_type: event_type.as_deref(),
                from: $req.from.as_deref(),
                to: $req.to.as_deref(),
                dir: dir(&$req.dir),
                limit: limit($req.limit, MAX_RELATIONS_LIMIT),
                recurse: $req.recurse,
            };
            let p = parts(page(&state, user, q).await?);
            let mut res = $endpoint::v1::Response::new(p.chunk);
            (res.next_batch, res.prev_batch, res.recursion_depth) = (p.next_batch, p.prev_batch, p.recursion_depth);
            Ok(res)
        }
    };
}

relations_handler!(relating, get_relating_events, |req| (None, None));
relations_handler!(relating_with_rel_type, get_relating_events_with_rel_type, |req| (
    Some(req.rel_type.to_string()),
    None
));
relations_handler!(
    relating_with_rel_type_and_event_type,
    get_relating_events_with_rel_type_and_event_type,
    |req| (Some(req.rel_type.to_string()), Some(req.event_type.to_string()))
);

pub async fn threads(state: AppState, req: Ruma<get_threads::v1::Request>) -> ApiResult<get_threads::v1::Response> {
    let user = req.sender()?;
    let participated_only = match &req.include {
        get_threads::v1::IncludeThreads::All => false,
        get_threads::v1::IncludeThreads::Participated => true,
        other => {
            return Err(crate::error::MatrixError::invalid_param(format!(
                "Unknown include value {}",
                other.as_str()
            )))
        }
    };
    let q = ThreadsQuery {
        room_id: req.room_id.as_str(),
        from: req.from.as_deref(),
        limit: limit(req.limit, MAX_THREADS_LIMIT),
        participated_only,
    };
    let mut conn = state.db.conn().await?;
    let page = relations::threads(&state.core, &mut conn, viewer(user), &q).await?;
    let mut res = get_threads::v1::Response::new(raw_list(page.chunk));
    res.next_batch = page.next_batch;
    Ok(res)
}
