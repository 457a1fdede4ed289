//! `POST /search`: full-text search of room events (the `room_events` category).

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    api::client::search::search_events::v3::{
        Criteria, EventContextResult, GroupingKey, OrderBy, Request, Response, ResultCategories, ResultGroup,
        ResultGroupMap, ResultRoomEvents, SearchKeys, SearchResult, UserProfile,
    },
    serde::Raw,
    OwnedMxcUri, OwnedRoomId, OwnedUserId, UInt,
};
use serde_json::Value;
use sqlx::AnyConnection;
use weft_core::{
    rooms::{
        client_format::{self, Viewer},
        search::{self, Cursor, Order, Query},
    },
    storage::events::StoredEvent,
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.ruma(search_events)
}

const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;
const MAX_CONTEXT: u64 = 100;

/// `room_events` is the only category; anything else is a client error, not an empty answer.
fn check_categories(json_body: &Option<Value>) -> ApiResult<()> {
    let categories = json_body
        .as_ref()
        .and_then(|b| b.get("search_categories"))
        .and_then(Value::as_object);
    if let Some(unknown) = categories.and_then(|c| c.keys().find(|k| *k != "room_events")) {
        return Err(MatrixError::invalid_param(format!(
            "Unknown search category {unknown:?}"
        )));
    }
    Ok(())
}

fn parse_keys(criteria: &Criteria) -> ApiResult<Vec<&'static str>> {
    match &criteria.keys {
        None => Ok(search::KEYS.to_vec()),
        Some(keys) => keys
            .iter()
            .map(|k: &SearchKeys| search::parse_key(k.as_str()).map_err(MatrixError::from))
            .collect(),
    }
}

fn parse_order(criteria: &Criteria) -> ApiResult<Order> {
    match &criteria.order_by {
        None | Some(OrderBy::Rank) => Ok(Order::Rank),
        Some(OrderBy::Recent) => Ok(Order::Recent),
        Some(other) => Err(MatrixError::invalid_param(format!(
            "Unknown order_by {:?}",
            other.as_str()
        ))),
    }
}

fn parse_groupings(criteria: &Criteria) -> ApiResult<Vec<GroupingKey>> {
    criteria
        .groupings
        .group_by
        .iter()
        .filter_map(|g| g.key.clone())
        .map(|k| match k {
            GroupingKey::RoomId | GroupingKey::Sender => Ok(k),
            other => Err(MatrixError::invalid_param(format!(
                "Unknown grouping key {:?}",
                other.as_str()
            ))),
        })
        .collect()
}

fn raw<T>(v: &Value) -> Option<Raw<T>> {
    Raw::from_json_string(v.to_string()).ok()
}

async fn search_events(state: AppState, req: Ruma<Request>) -> ApiResult<Response> {
    let user = req.sender()?;
    check_categories(&req.json_body)?;
    let criteria = req
        .search_categories
        .room_events
        .as_ref()
        .ok_or_else(|| MatrixError::invalid_param("search_categories.room_events is required"))?;
    let keys = parse_keys(criteria)?;
    let order = parse_order(criteria)?;
    let groupings = parse_groupings(criteria)?;
    let from = match &req.next_batch {
        Some(token) => Cursor::parse(token, order)?,
        None => Cursor::start(order),
    };
    let limit = criteria
        .filter
        .limit
        .map(u64::from)
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT) as usize;

    let core = &state.core;
    let mut conn = state.db.conn().await?;
    let rooms = search::searchable_rooms(&mut conn, user.user_id.as_str(), &criteria.filter).await?;
    let query = Query {
        user_id: user.user_id.as_str(),
        term: &criteria.search_term,
        keys,
        rooms,
        filter: &criteria.filter,
        order,
        limit,
        from,
    };
    let page = search::search(core, &mut conn, &query).await?;

    let viewer = Viewer {
        user_id: user.user_id.as_str(),
        device_id: Some(user.device_id.as_str()),
    };
    let events: Vec<StoredEvent> = page.hits.iter().map(|h| h.event.clone()).collect();
    let formatted = client_format::format(core, &mut conn, &events, Some(viewer)).await?;
    // Context only when asked for: ruma fills in a default when the field is absent.
    let wants_context = req
        .json_body
        .as_ref()
        .is_some_and(|b| !b["search_categories"]["room_events"]["event_context"].is_null());

    let mut results = Vec::with_capacity(events.len());
    for (hit, event) in page.hits.iter().zip(&formatted) {
        let mut result = SearchResult::new();
        result.rank = Some(hit.rank);
        result.result = raw(event);
        if wants_context {
            result.context = event_context(&state, &mut conn, viewer, &hit.event, criteria).await?;
        }
        results.push(result);
    }

    let mut room_events = ResultRoomEvents::new();
    room_events.count = Some(UInt::try_from(page.count).unwrap_or(UInt::MAX));
    room_events.highlights = page.highlights;
    room_events.next_batch = page.next.map(Cursor::token);
    room_events.groups = groupings.iter().map(|k| group(k, &events)).collect();
    if criteria.include_state == Some(true) {
        room_events.state = include_state(&state, &mut conn, viewer, &events).await?;
    }
    room_events.results = results;
    let mut categories = ResultCategories::new();
    categories.room_events = room_events;
    Ok(Response::new(categories))
}

/// The events around one result, with the senders' profiles when asked.
async fn event_context(
    state: &AppState,
    conn: &mut AnyConnection,
    viewer: Viewer<'_>,
    event: &StoredEvent,
    criteria: &Criteria,
) -> ApiResult<EventContextResult> {
    let wanted = &criteria.event_context;
    let before = u64::from(wanted.before_limit).min(MAX_CONTEXT) as usize;
    let after = u64::from(wanted.after_limit).min(MAX_CONTEXT) as usize;
    let ctx = search::context(&state.core, conn, viewer.user_id, event, before, after).await?;
    let mut out = EventContextResult::new();
    out.start = Some(ctx.start);
    out.end = Some(ctx.end);
    let fmt_before = client_format::format(&state.core, conn, &ctx.before, Some(viewer)).await?;
    let fmt_after = client_format::format(&state.core, conn, &ctx.after, Some(viewer)).await?;
    out.events_before = fmt_before.iter().filter_map(raw).collect();
    out.events_after = fmt_after.iter().filter_map(raw).collect();
    if wanted.include_profile {
        let senders: Vec<&str> = std::iter::once(event)
            .chain(&ctx.before)
            .chain(&ctx.after)
            .map(|e| e.sender.as_str())
            .collect();
        for (user_id, (displayname, avatar_url)) in search::profiles(conn, &event.room_id, &senders).await? {
            let Ok(user_id) = OwnedUserId::try_from(user_id) else {
                continue;
            };
            let mut profile = UserProfile::new();
            profile.displayname = displayname;
            profile.avatar_url = avatar_url.map(OwnedMxcUri::from).filter(|m| m.is_valid());
            out.profile_info.insert(user_id, profile);
        }
    }
    Ok(out)
}

/// Results grouped by room or sender; groups are ordered by their best result.
fn group(key: &GroupingKey, events: &[StoredEvent]) -> ResultGroupMap {
    let mut groups: BTreeMap<String, ResultGroup> = BTreeMap::new();
    for e in events {
        let name = if *key == GroupingKey::Sender {
            &e.sender
        } else {
            &e.room_id
        };
        let order = groups.len();
        let g = groups.entry(name.clone()).or_insert_with(|| {
            let mut g = ResultGroup::new();
            g.order = UInt::try_from(order as u64 + 1).ok();
            g
        });
        if let Ok(id) = e.event_id.as_str().try_into() {
            g.results.push(id);
        }
    }
    if *key == GroupingKey::Sender {
        ResultGroupMap::Sender(
            groups
                .into_iter()
                .filter_map(|(k, g)| Some((OwnedUserId::try_from(k).ok()?, g)))
                .collect(),
        )
    } else {
        ResultGroupMap::RoomId(
            groups
                .into_iter()
                .filter_map(|(k, g)| Some((OwnedRoomId::try_from(k).ok()?, g)))
                .collect(),
        )
    }
}

/// Current state of each room with results, where the user may read it.
async fn include_state(
    state: &AppState,
    conn: &mut AnyConnection,
    viewer: Viewer<'_>,
    events: &[StoredEvent],
) -> ApiResult<BTreeMap<OwnedRoomId, Vec<Raw<ruma::events::AnyStateEvent>>>> {
    let mut out = BTreeMap::new();
    let mut rooms: Vec<&str> = events.iter().map(|e| e.room_id.as_str()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    for room_id in rooms {
        let Some(list) = search::readable_state(&state.core, conn, viewer.user_id, room_id).await? else {
            continue;
        };
        let formatted = client_format::format(&state.core, conn, &list, Some(viewer)).await?;
        if let Ok(id) = OwnedRoomId::try_from(room_id) {
            out.insert(id, formatted.iter().filter_map(raw).collect());
        }
    }
    Ok(out)
}
