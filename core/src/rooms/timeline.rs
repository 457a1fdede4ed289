//! Reading a room's timeline: in topological order for `/messages` and `/context` (tokens
//! `t<depth>-<position>`, see `Key`), in stream order for sync (tokens `s<position>`: the point
//! just after that position, as every stream token). `/messages` accepts both.

use std::{collections::HashSet, sync::Arc};

use ruma::api::client::filter::RoomEventFilter;
use sqlx::AnyConnection;

use super::{
    filter as event_filter,
    visibility::{self, Reader},
};
use crate::{
    events::StateMap,
    storage::{
        events::{self, StoredEvent},
        rooms as room_store, state as state_store,
    },
    Core, Error, Result,
};

/// A stream token `s<N>`: the point just after stream position N (sync's `prev_batch`,
/// relations).
pub fn token(pos: i64) -> String {
    format!("s{pos}")
}

/// The stream position of a token: `s<N>`, a sync token (whose first part is the timeline's),
/// or a topological token's position part.
pub fn parse_token(token: &str) -> Result<i64> {
    if let Some(topological) = token.strip_prefix('t') {
        return Ok(parse_topological(token, topological)?.pos);
    }
    // Sync tokens may carry other streams after an underscore; the timeline part comes first.
    let first = token.split('_').next().unwrap_or_default();
    first
        .strip_prefix('s')
        .unwrap_or(first)
        .parse()
        .map_err(|_| invalid(token))
}

fn invalid(token: &str) -> Error {
    Error::InvalidParam(format!("invalid pagination token {token:?}"))
}

fn parse_topological(token: &str, rest: &str) -> Result<Key> {
    let (depth, pos) = rest.split_once('-').ok_or_else(|| invalid(token))?;
    Ok(Key {
        depth: depth.parse().map_err(|_| invalid(token))?,
        pos: pos.parse().map_err(|_| invalid(token))?,
    })
}

/// A point in a room's timeline in topological order: just after the event at this depth and
/// stream position. Events compare by (depth, stream position); backfilled events have
/// negative positions but sit at their depth. Paginating backwards from a key yields the
/// events at or before it, forwards the events after it; since both parts are integers, "at or
/// before (d, p - 1)" is "before (d, p)".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub depth: i64,
    pub pos: i64,
}

impl Key {
    /// Before every event.
    pub const START: Key = Key {
        depth: i64::MIN,
        pos: i64::MIN,
    };
    /// After every event.
    pub const END: Key = Key {
        depth: i64::MAX,
        pos: i64::MAX,
    };

    /// The key of a timeline event (one with a stream position).
    pub fn of(event: &StoredEvent) -> Key {
        Key {
            depth: event.depth,
            pos: event.stream_pos.unwrap_or_default(),
        }
    }

    /// The token a client gets: `t<depth>-<position>`.
    pub fn token(self) -> String {
        format!("t{}-{}", self.depth, self.pos)
    }

    /// The key just past `event` when reading in `dir`.
    fn past(event: &StoredEvent, dir: Dir) -> Key {
        let key = Key::of(event);
        match dir {
            Dir::Backward => Key {
                pos: key.pos - 1,
                ..key
            },
            Dir::Forward => key,
        }
    }
}

/// The key a pagination token stands for in a room: a topological token as it is; a stream
/// token (from sync) as the topologically last event of the room at or before that position,
/// which is what the client has seen.
pub async fn parse_key(conn: &mut AnyConnection, room_id: &str, token: &str) -> Result<Key> {
    if let Some(rest) = token.strip_prefix('t') {
        return parse_topological(token, rest);
    }
    let pos = parse_token(token)?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT depth, stream_pos FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL AND stream_pos <= $2
         ORDER BY depth DESC, stream_pos DESC LIMIT 1",
    )
    .bind(room_id)
    .bind(pos)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or(Key::START, |(depth, pos)| Key { depth, pos }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Backward,
    Forward,
}

/// Up to `limit` timeline events of the room after (forward) or at-and-before (backward)
/// `from` in topological order, bounded by `to` when given, in the direction's order.
pub async fn page(
    conn: &mut AnyConnection,
    room_id: &str,
    from: Key,
    to: Option<Key>,
    dir: Dir,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let (cond, order, bound) = match dir {
        Dir::Backward => (
            "(depth, stream_pos) <= ($2, $3) AND (depth, stream_pos) > ($4, $5)",
            "DESC",
            to.unwrap_or(Key::START),
        ),
        Dir::Forward => (
            "(depth, stream_pos) > ($2, $3) AND (depth, stream_pos) <= ($4, $5)",
            "ASC",
            to.unwrap_or(Key::END),
        ),
    };
    let sql = format!(
        "SELECT {} FROM events WHERE room_id = $1 AND {cond} AND stream_pos IS NOT NULL
         ORDER BY depth {order}, stream_pos {order} LIMIT $6",
        events::COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(room_id)
        .bind(from.depth)
        .bind(from.pos)
        .bind(bound.depth)
        .bind(bound.pos)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| events::from_row(r).map_err(Error::from)).collect()
}

/// A page of `/messages`.
#[derive(Debug)]
pub struct Messages {
    /// In the direction's order.
    pub events: Vec<StoredEvent>,
    pub start: String,
    /// Where the next page continues; `None` when this page is empty.
    pub end: Option<String>,
}

/// `/messages`: up to `limit` events of the room that `user` may see and `filter` keeps, from
/// the `from` token (the newest event backwards, the oldest forwards, when absent) in `dir`, up
/// to the `to` token. Users who never were in a room that is not world-readable are refused.
#[allow(clippy::too_many_arguments)]
pub async fn messages(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    (from, to): (Option<&str>, Option<&str>),
    dir: Dir,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Messages> {
    super::room_rules(core, conn, room_id).await?;
    if room_store::membership(conn, room_id, user).await?.is_none()
        && !visibility::can_read_room(conn, user, room_id).await?
    {
        return Err(Error::Forbidden("You are not allowed to read this room".into()));
    }
    let from_key = match (from, dir) {
        (Some(token), _) => parse_key(conn, room_id, token).await?,
        (None, Dir::Backward) => page(conn, room_id, Key::END, None, dir, 1)
            .await?
            .first()
            .map_or(Key::START, Key::of),
        (None, Dir::Forward) => Key::START,
    };
    let to = match to {
        Some(token) => Some(parse_key(conn, room_id, token).await?),
        None => None,
    };
    let window = visible_window(
        core,
        conn,
        Reader::User(user),
        room_id,
        (from_key, to),
        dir,
        limit,
        filter,
    )
    .await?;
    Ok(Messages {
        start: from.map_or_else(|| from_key.token(), str::to_owned),
        // Synapse's way, which clients and sytest expect: a page with events says where the
        // next one starts, even when it will be empty; only an empty page has no `end`.
        end: (!window.events.is_empty()).then(|| window.next.token()),
        events: window.events,
    })
}

/// Rounds of fetching older history for one page (each up to `history::FETCH_LIMIT` events).
const HISTORY_ROUNDS: usize = 5;

/// `/messages` for a client: `messages`, and when a backwards page runs out before `limit`
/// events, the room's older history fetched from other servers (`rooms::history`) and the page
/// read again, so that the client sees it as if it had always been here. No pooled connection
/// is held while history is fetched.
#[allow(clippy::too_many_arguments)]
pub async fn messages_with_history(
    core: &Core,
    user: &str,
    room_id: &str,
    tokens: (Option<&str>, Option<&str>),
    dir: Dir,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Messages> {
    let mut rounds = 0;
    loop {
        let page = {
            let mut conn = core.db.conn().await?;
            messages(core, &mut conn, user, room_id, tokens, dir, limit, filter).await?
        };
        // Only a page that reached the start of what is stored here (no `end`, no `to` that
        // stopped it) can lack history.
        if dir != Dir::Backward || page.end.is_some() || tokens.1.is_some() || rounds == HISTORY_ROUNDS {
            return Ok(page);
        }
        rounds += 1;
        if !super::history::fill(core, room_id).await? {
            return Ok(page);
        }
    }
}

// ----- Windows of visible events, `/context`, member lists at a position, timestamp lookup -----

/// Events scanned per query while looking for visible, filter-matching ones.
const SCAN_BATCH: i64 = 100;

/// Events a user may see and a filter keeps, read from a token position in one direction.
#[derive(Debug)]
pub struct Window {
    /// In the direction's order (newest first when backwards).
    pub events: Vec<StoredEvent>,
    /// Where the next page in the same direction continues: right past the last returned
    /// event, or past the last scanned one when the timeline ran out.
    pub next: Key,
}

/// Up to `limit` events from `from` in `dir` (up to `to`, when given) that `reader` (a user or
/// another server) may see and `filter` keeps. Hidden and filtered-out events are skipped, so a
/// window may span many more.
#[allow(clippy::too_many_arguments)]
pub async fn visible_window(
    core: &Core,
    conn: &mut AnyConnection,
    reader: Reader<'_>,
    room_id: &str,
    (from, to): (Key, Option<Key>),
    dir: Dir,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Window> {
    let mut window = Window {
        events: Vec::new(),
        next: from,
    };
    // A user does not see the messages of users they ignore (their state events still count).
    let ignored = match reader {
        Reader::User(user) => crate::account_data::ignored_users(conn, user).await?,
        Reader::Server(_) | Reader::Admin => Default::default(),
    };
    let scan = SCAN_BATCH.max(limit as i64);
    while window.events.len() < limit {
        let batch = page(conn, room_id, window.next, to, dir, scan).await?;
        let more = batch.len() as i64 == scan;
        let visible: HashSet<String> = visibility::filter_visible_to(core, conn, reader, room_id, batch.clone())
            .await?
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        for event in batch {
            window.next = Key::past(&event, dir);
            let from_ignored = event.state_key.is_none() && ignored.contains(&event.sender);
            if visible.contains(&event.event_id) && !from_ignored && event_filter::event_matches(filter, &event) {
                window.events.push(event);
                if window.events.len() == limit {
                    return Ok(window);
                }
            }
        }
        if !more {
            break;
        }
    }
    Ok(window)
}

/// An accepted timeline event of the room that `user` may see. Missing, foreign, rejected and
/// hidden events are all the same NotFound, so a client cannot probe for hidden events.
pub async fn visible_event(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    event_id: &str,
) -> Result<StoredEvent> {
    super::room_rules(core, conn, room_id).await?;
    let not_found = || Error::NotFound("Event not found".into());
    let event = events::get(conn, event_id)
        .await?
        .filter(|e| e.room_id == room_id && e.stream_pos.is_some())
        .ok_or_else(not_found)?;
    visibility::filter_visible(core, conn, user, room_id, vec![event])
        .await?
        .pop()
        .ok_or_else(not_found)
}

/// An event `user` may see, found by its ID alone (the deprecated `GET /events/{eventId}`);
/// NotFound as `visible_event` otherwise.
pub async fn visible_event_by_id(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    event_id: &str,
) -> Result<StoredEvent> {
    let room_id = events::get(conn, event_id)
        .await?
        .map(|e| e.room_id)
        .ok_or_else(|| Error::NotFound("Event not found".into()))?;
    visible_event(core, conn, user, &room_id, event_id).await
}

/// An event with the visible events around it (`/context`).
#[derive(Debug)]
pub struct Context {
    pub event: StoredEvent,
    /// Newest first; `before.next` continues backwards (`start`).
    pub before: Window,
    /// Oldest first; `after.next` continues forwards (`end`).
    pub after: Window,
    /// IDs of the state at the last returned event: all of it, or only the senders' member
    /// events when the filter lazy-loads members.
    pub state: Vec<String>,
}

/// The event and up to `limit` events around it: `limit / 2` before, the rest after (as
/// Synapse splits it), both kept by `filter` and visible to `user`.
pub async fn context(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    event_id: &str,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Context> {
    let event = visible_event(core, conn, user, room_id, event_id).await?;
    let before_limit = limit / 2;
    let before_from = Key::past(&event, Dir::Backward);
    let before = visible_window(
        core,
        conn,
        Reader::User(user),
        room_id,
        (before_from, None),
        Dir::Backward,
        before_limit,
        filter,
    )
    .await?;
    let after = visible_window(
        core,
        conn,
        Reader::User(user),
        room_id,
        (Key::of(&event), None),
        Dir::Forward,
        limit - before_limit,
        filter,
    )
    .await?;
    let last = after.events.last().unwrap_or(&event);
    let full = state_after(core, conn, last).await?;
    let state = if filter.lazy_load_options.is_disabled() {
        full.values().cloned().collect()
    } else {
        let senders: HashSet<&str> = before
            .events
            .iter()
            .chain([&event])
            .chain(after.events.iter())
            .map(|e| e.sender.as_str())
            .collect();
        senders
            .into_iter()
            .filter_map(|s| full.get(&("m.room.member".to_owned(), s.to_owned())).cloned())
            .collect()
    };
    Ok(Context {
        event,
        before,
        after,
        state,
    })
}

async fn state_after(core: &Core, conn: &mut AnyConnection, event: &StoredEvent) -> Result<Arc<StateMap>> {
    state_store::load_or_empty(&core.db, conn, event.state_after).await
}

/// `content.membership` of a member event ("" when unreadable).
pub fn membership_of(event: &StoredEvent) -> String {
    serde_json::from_str::<serde_json::Value>(&event.json)
        .ok()
        .and_then(|j| j["content"]["membership"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// How far a user's view of the member list reaches.
enum MemberView {
    /// Joined, or the room is world-readable: up to now.
    Current,
    /// Left or banned after having been joined: up to this departure event.
    Until(Box<StoredEvent>),
}

/// Membership changes walked back when checking whether a departed user was ever joined.
const MAX_MEMBERSHIP_WALK: usize = 64;

async fn member_view(core: &Core, conn: &mut AnyConnection, user: &str, room_id: &str) -> Result<MemberView> {
    if visibility::can_read_room(conn, user, room_id).await? {
        return Ok(MemberView::Current);
    }
    let forbidden = || Error::Forbidden("You are not a member of this room".into());
    let membership = room_store::membership(conn, room_id, user)
        .await?
        .ok_or_else(forbidden)?;
    if membership.membership != "leave" && membership.membership != "ban" {
        return Err(forbidden());
    }
    let departure = events::get(conn, &membership.event_id).await?.ok_or_else(forbidden)?;
    if !was_joined_before(core, conn, user, &departure).await? {
        // A rejected invite or a ban from outside: the user never saw the member list.
        return Err(forbidden());
    }
    Ok(MemberView::Until(Box::new(departure)))
}

/// Whether one of the user's membership events before `event` was a join.
async fn was_joined_before(core: &Core, conn: &mut AnyConnection, user: &str, event: &StoredEvent) -> Result<bool> {
    let key = ("m.room.member".to_owned(), user.to_owned());
    let mut group = event.state_before;
    for _ in 0..MAX_MEMBERSHIP_WALK {
        let Some(g) = group else { return Ok(false) };
        let state = state_store::load(&core.db, conn, g).await?;
        let Some(id) = state.get(&key) else { return Ok(false) };
        let Some(prev) = events::get(conn, id).await? else {
            return Ok(false);
        };
        if membership_of(&prev) == "join" {
            return Ok(true);
        }
        group = prev.state_before;
    }
    Ok(false)
}

/// The room state whose member list `user` may read: the current state, or the state after the
/// last event at or before `at` (a pagination token). Users who left see at most the state when they
/// left; users who were never in a non-world-readable room are Forbidden.
pub async fn member_list_state(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    at: Option<&str>,
) -> Result<Arc<StateMap>> {
    super::room_rules(core, conn, room_id).await?;
    let view = member_view(core, conn, user, room_id).await?;
    let departure = match &view {
        MemberView::Until(d) => Some(d.as_ref()),
        MemberView::Current => None,
    };
    let Some(at) = at else {
        return match departure {
            Some(d) => state_after(core, conn, d).await,
            None => super::current_state(core, conn, room_id).await,
        };
    };
    let at = parse_key(conn, room_id, at).await?;
    let at = departure
        .filter(|d| d.stream_pos.is_some())
        .map_or(at, |d| at.min(Key::of(d)));
    let last = page(conn, room_id, at, None, Dir::Backward, 1)
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound("The room has no state at this token".into()))?;
    // The user's own departure is theirs to see, though they are no longer joined after it.
    let own_departure = departure.is_some_and(|d| d.event_id == last.event_id);
    if !own_departure
        && visibility::filter_visible(core, conn, user, room_id, vec![last.clone()])
            .await?
            .is_empty()
    {
        return Err(Error::Forbidden("You may not see the room at this point".into()));
    }
    state_after(core, conn, &last).await
}

/// The member events of `state` whose membership is `membership` (when given) and is not
/// `not_membership` (when given), ordered by user ID. Both together narrow the list, as every
/// server implements it (the spec's "or" wording is matrix-org/matrix-spec#2308).
pub async fn member_events(
    conn: &mut AnyConnection,
    state: &StateMap,
    membership: Option<&str>,
    not_membership: Option<&str>,
) -> Result<Vec<StoredEvent>> {
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect();
    let mut list = events::get_many(conn, &ids).await?;
    list.retain(|e| {
        let m = membership_of(e);
        membership.is_none_or(|want| m == want) && not_membership.is_none_or(|skip| m != skip)
    });
    list.sort_by(|a, b| a.state_key.cmp(&b.state_key));
    Ok(list)
}

/// The closest event to `ts` that `user` may see: the first at or after it (forward) or the
/// last at or before it (backward). Forbidden for users never in a non-world-readable room.
pub async fn event_at_timestamp(
    core: &Core,
    conn: &mut AnyConnection,
    user: &str,
    room_id: &str,
    ts: i64,
    dir: Dir,
) -> Result<StoredEvent> {
    super::room_rules(core, conn, room_id).await?;
    if room_store::membership(conn, room_id, user).await?.is_none()
        && !visibility::can_read_room(conn, user, room_id).await?
    {
        return Err(Error::Forbidden("You are not allowed to read this room".into()));
    }
    let mut cursor = (ts, if dir == Dir::Forward { i64::MIN } else { i64::MAX });
    loop {
        let batch = by_timestamp(conn, room_id, cursor, dir, SCAN_BATCH).await?;
        let more = batch.len() as i64 == SCAN_BATCH;
        if let Some(last) = batch.last() {
            cursor = (last.origin_server_ts, last.stream_pos.unwrap_or_default());
        }
        if let Some(found) = visibility::filter_visible(core, conn, user, room_id, batch)
            .await?
            .into_iter()
            .next()
        {
            return Ok(found);
        }
        if !more {
            return Err(Error::NotFound("No visible event found in that direction".into()));
        }
    }
}

/// Timeline events ordered by (origin_server_ts, stream_pos) strictly past `after` in `dir`
/// (the events_room_ts index bounds the scan by timestamp).
pub(crate) async fn by_timestamp(
    conn: &mut AnyConnection,
    room_id: &str,
    after: (i64, i64),
    dir: Dir,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let (cond, order) = match dir {
        Dir::Forward => (
            "origin_server_ts >= $2 AND (origin_server_ts > $2 OR stream_pos > $3)",
            "ASC",
        ),
        Dir::Backward => (
            "origin_server_ts <= $2 AND (origin_server_ts < $2 OR stream_pos < $3)",
            "DESC",
        ),
    };
    let sql = format!(
        "SELECT {} FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL AND {cond}
         ORDER BY origin_server_ts {order}, stream_pos {order} LIMIT $4",
        events::COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(room_id)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| events::from_row(r).map_err(Error::from)).collect()
}
