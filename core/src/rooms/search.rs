//! Full-text search over room events (`POST /search`): message bodies, room names and topics
//! are indexed as events are persisted; queries use PostgreSQL full-text search or SQLite FTS5.
//!
//! Only the match clause and the rank expression differ per backend (`dialect`); the rest of
//! the query, the visibility filtering and the pagination are shared. Redacted events stay in
//! the index but are excluded at query time, so a redaction needs no index maintenance.
//!
//! Pagination tokens: `s<N>` continues a `recent` search below stream position N; `r<N>`
//! continues a `rank` search after N index rows (rank order has no stable position to resume
//! from, and N counts rows before visibility filtering, so skipped rows are never re-read).

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::api::client::filter::RoomEventFilter;
use sqlx::{AnyConnection, Row};

use super::{filter, timeline, visibility};
use crate::{
    db::batch::Batch,
    events::Pdu,
    storage::{
        events::{self, StoredEvent},
        placeholders, rooms,
    },
    Backend, Core, Error, Result,
};

/// The content keys clients may search, as the spec names them.
pub const KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

/// The key and text an event contributes to the index, if any.
fn indexed_text(pdu: &Pdu) -> Option<(&'static str, String)> {
    let (key, field) = match (pdu.kind.to_string().as_str(), pdu.state_key.as_deref()) {
        ("m.room.message", _) => ("content.body", "body"),
        // Names and topics only count as room state, not as look-alike message events.
        ("m.room.name", Some("")) => ("content.name", "name"),
        ("m.room.topic", Some("")) => ("content.topic", "topic"),
        _ => return None,
    };
    let content = pdu.content_value();
    // PostgreSQL text cannot hold NUL; a failed insert would lose the event itself.
    let text = content.get(field)?.as_str()?.replace('\0', "");
    (!text.trim().is_empty()).then_some((key, text))
}

/// Indexes an accepted event for search; called by the pipeline inside its transaction.
/// The same SQL serves both backends: PostgreSQL derives the tsvector in a generated column,
/// SQLite mirrors the row into FTS5 by trigger.
pub fn index_event<'q>(batch: &mut Batch<'q>, pdu: &'q Pdu) {
    if pdu.rejected {
        return;
    }
    let Some((key, text)) = indexed_text(pdu) else {
        return;
    };
    batch
        .push(
            "INSERT INTO event_search (event_id, room_id, search_key, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (event_id) DO NOTHING",
            4,
        )
        .bind(pdu.event_id.as_str())
        .bind(pdu.room_id.as_str())
        .bind(key)
        .bind(text);
}

/// The search term in each backend's query language, split into phrases (word lists), with
/// `or` between groups and `-` for exclusion, as PostgreSQL's `websearch_to_tsquery` reads it.
#[derive(Debug, Default, PartialEq)]
struct ParsedTerm {
    /// OR-ed groups of AND-ed items; an item is (negated, phrase words).
    groups: Vec<Vec<(bool, Vec<String>)>>,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn parse_term(term: &str) -> ParsedTerm {
    let mut groups = vec![Vec::new()];
    let mut rest = term.trim_start();
    while !rest.is_empty() {
        let negated = rest.starts_with('-');
        if negated {
            rest = &rest[1..];
        }
        let (chunk, tail, quoted) = match rest.strip_prefix('"') {
            Some(inner) => match inner.split_once('"') {
                Some((phrase, tail)) => (phrase, tail, true),
                None => (inner, "", true),
            },
            None => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (&rest[..end], &rest[end..], false)
            }
        };
        rest = tail.trim_start();
        if !quoted && !negated && chunk.eq_ignore_ascii_case("or") {
            groups.push(Vec::new());
            continue;
        }
        let phrase = words(chunk);
        if phrase.is_empty() {
            continue;
        }
        if quoted {
            groups.last_mut().expect("never empty").push((negated, phrase));
        } else {
            // An unquoted chunk like `foo-bar` is several words, all required.
            let group = groups.last_mut().expect("never empty");
            group.extend(phrase.into_iter().map(|w| (negated, vec![w])));
        }
    }
    groups.retain(|g| g.iter().any(|(neg, _)| !neg));
    ParsedTerm { groups }
}

impl ParsedTerm {
    /// The words a client should highlight: every word that must (or may) match.
    fn highlights(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .groups
            .iter()
            .flatten()
            .filter(|(neg, _)| !neg)
            .flat_map(|(_, p)| p.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// An FTS5 MATCH expression. Every word is quoted, so FTS5 operators and syntax in the
    /// user's input are plain text. A NOT needs a left operand, so exclusions follow positives.
    fn fts5(&self) -> String {
        let quote = |p: &Vec<String>| format!("\"{}\"", p.join(" "));
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                let pos: Vec<String> = g.iter().filter(|(n, _)| !n).map(|(_, p)| quote(p)).collect();
                let neg: Vec<String> = g
                    .iter()
                    .filter(|(n, _)| *n)
                    .map(|(_, p)| format!(" NOT {}", quote(p)))
                    .collect();
                format!("({}{})", pos.join(" AND "), neg.concat())
            })
            .collect();
        groups.join(" OR ")
    }
}

/// The backend-specific parts of a search query: the FROM/WHERE head that matches `$1`, the
/// rank expression (higher is better), and the bind for `$1`.
struct Dialect {
    from_match: &'static str,
    score: &'static str,
    term: String,
}

fn dialect(backend: Backend, term: &str, parsed: &ParsedTerm) -> Dialect {
    match backend {
        Backend::Postgres => Dialect {
            from_match: "event_search s JOIN events e ON e.event_id = s.event_id
                 WHERE s.vector @@ websearch_to_tsquery('english', $1)",
            score: "CAST(ts_rank(s.vector, websearch_to_tsquery('english', $1)) AS DOUBLE PRECISION)",
            term: term.to_owned(),
        },
        Backend::Sqlite => Dialect {
            from_match: "event_search_fts JOIN event_search s ON s.id = event_search_fts.rowid
                 JOIN events e ON e.event_id = s.event_id WHERE event_search_fts MATCH $1",
            // bm25 is lower-is-better.
            score: "CAST(-bm25(event_search_fts) AS REAL)",
            term: parsed.fts5(),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Recent,
    Rank,
}

/// Where a page starts: below a stream position (recent) or after N rows (rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Below(i64),
    Skip(i64),
}

impl Cursor {
    pub fn start(order: Order) -> Cursor {
        match order {
            Order::Recent => Cursor::Below(i64::MAX),
            Order::Rank => Cursor::Skip(0),
        }
    }

    pub fn token(self) -> String {
        match self {
            Cursor::Below(pos) => format!("s{pos}"),
            Cursor::Skip(n) => format!("r{n}"),
        }
    }

    /// Parses a `next_batch` token, which must belong to a search with the same order.
    pub fn parse(token: &str, order: Order) -> Result<Cursor> {
        let bad = || Error::InvalidParam(format!("invalid next_batch token {token:?}"));
        let (kind, n) = token.split_at_checked(1).ok_or_else(bad)?;
        let n: i64 = n.parse().map_err(|_| bad())?;
        match (kind, order) {
            ("s", Order::Recent) if n > 0 => Ok(Cursor::Below(n)),
            ("r", Order::Rank) if n >= 0 => Ok(Cursor::Skip(n)),
            _ => Err(bad()),
        }
    }
}

pub struct Query<'a> {
    pub user_id: &'a str,
    pub term: &'a str,
    /// Validated members of `KEYS`.
    pub keys: Vec<&'static str>,
    /// Rooms to search (see `searchable_rooms`).
    pub rooms: Vec<String>,
    pub filter: &'a RoomEventFilter,
    pub order: Order,
    pub limit: usize,
    pub from: Cursor,
}

pub struct Hit {
    pub event: StoredEvent,
    pub rank: f64,
}

#[derive(Default)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<Cursor>,
    /// Matches in the searched rooms before visibility filtering (an estimate, as the spec allows).
    pub count: u64,
    pub highlights: Vec<String>,
}

/// Rooms the user may search: those they are in or have been in (history visibility decides
/// what they see of the latter), narrowed by the filter's rooms and not_rooms.
pub async fn searchable_rooms(
    conn: &mut AnyConnection,
    user_id: &str,
    filter: &RoomEventFilter,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for membership in ["join", "leave", "ban"] {
        out.extend(
            rooms::rooms_of_user(conn, user_id, membership)
                .await?
                .into_iter()
                .map(|m| m.room_id),
        );
    }
    out.retain(|r| {
        filter
            .rooms
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o.as_str() == r))
            && !filter.not_rooms.iter().any(|n| n.as_str() == r)
    });
    out.sort();
    out.dedup();
    Ok(out)
}

/// The shared conditions after the match clause, with binds from `$2` on: rooms, then keys.
fn conditions(q: &Query<'_>) -> String {
    format!(
        " AND s.room_id IN ({}) AND s.search_key IN ({}) AND e.redacted_by IS NULL AND e.stream_pos IS NOT NULL",
        placeholders(2, q.rooms.len()),
        placeholders(2 + q.rooms.len(), q.keys.len()),
    )
}

fn bind_common<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    d: &'q Dialect,
    q: &'q Query<'_>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query = query.bind(d.term.as_str());
    for r in &q.rooms {
        query = query.bind(r.as_str());
    }
    for k in &q.keys {
        query = query.bind(*k);
    }
    query
}

/// One batch of matching rows in result order, starting at `cursor`.
async fn fetch(conn: &mut AnyConnection, d: &Dialect, q: &Query<'_>, cursor: Cursor, n: i64) -> Result<Vec<Hit>> {
    let columns: Vec<String> = events::COLUMNS.split(',').map(|c| format!("e.{}", c.trim())).collect();
    let next = 2 + q.rooms.len() + q.keys.len();
    let (page_cond, order, bound, offset) = match cursor {
        Cursor::Below(pos) => (format!(" AND e.stream_pos < ${next}"), "e.stream_pos DESC", pos, 0),
        // `$next` is bound but always true, to keep one bind layout.
        Cursor::Skip(skip) => (format!(" AND ${next} >= 0"), "score DESC, e.stream_pos DESC", 0, skip),
    };
    let sql = format!(
        "SELECT {}, {} AS score FROM {}{}{page_cond} ORDER BY {order} LIMIT ${} OFFSET ${}",
        columns.join(", "),
        d.score,
        d.from_match,
        conditions(q),
        next + 1,
        next + 2,
    );
    let rows = bind_common(sqlx::query(&sql), d, q)
        .bind(bound)
        .bind(n)
        .bind(offset)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Hit {
                event: events::from_row(r)?,
                rank: r.try_get::<f64, _>(17)?,
            })
        })
        .collect()
}

async fn count(conn: &mut AnyConnection, d: &Dialect, q: &Query<'_>) -> Result<u64> {
    let sql = format!("SELECT COUNT(*) FROM {}{}", d.from_match, conditions(q));
    let row = bind_common(sqlx::query(&sql), d, q).fetch_one(conn).await?;
    Ok(row.try_get::<i64, _>(0)?.max(0) as u64)
}

/// The IDs of the events in `batch` the user may see (history visibility, per room).
async fn visible_ids(core: &Core, conn: &mut AnyConnection, user_id: &str, batch: &[Hit]) -> Result<HashSet<String>> {
    let mut by_room: HashMap<&str, Vec<StoredEvent>> = HashMap::new();
    for hit in batch {
        by_room
            .entry(hit.event.room_id.as_str())
            .or_default()
            .push(hit.event.clone());
    }
    let mut out = HashSet::new();
    for (room_id, list) in by_room {
        out.extend(
            visibility::filter_visible(core, conn, user_id, room_id, list)
                .await?
                .into_iter()
                .map(|e| e.event_id),
        );
    }
    Ok(out)
}

/// Runs a search: matching, visible, filter-passing events, one page of them.
pub async fn search(core: &Core, conn: &mut AnyConnection, q: &Query<'_>) -> Result<Page> {
    let parsed = parse_term(q.term);
    let highlights = parsed.highlights();
    if parsed.groups.is_empty() || q.rooms.is_empty() || q.keys.is_empty() {
        return Ok(Page {
            highlights,
            ..Page::default()
        });
    }
    let d = dialect(core.db.backend(), q.term, &parsed);
    let count = count(conn, &d, q).await?;
    let batch_size = (q.limit * 2).max(20) as i64;
    let mut hits = Vec::new();
    let mut cursor = q.from;
    loop {
        let batch = fetch(conn, &d, q, cursor, batch_size).await?;
        let exhausted = (batch.len() as i64) < batch_size;
        let visible = visible_ids(core, conn, q.user_id, &batch).await?;
        let total = batch.len();
        for (i, hit) in batch.into_iter().enumerate() {
            cursor = match cursor {
                Cursor::Below(_) => Cursor::Below(hit.event.stream_pos.unwrap_or_default()),
                Cursor::Skip(n) => Cursor::Skip(n + 1),
            };
            if visible.contains(&hit.event.event_id) && filter::event_matches(q.filter, &hit.event) {
                hits.push(hit);
            }
            if hits.len() == q.limit {
                let more = !(exhausted && i + 1 == total);
                return Ok(Page {
                    hits,
                    next: more.then_some(cursor),
                    count,
                    highlights,
                });
            }
        }
        if exhausted {
            return Ok(Page {
                hits,
                next: None,
                count,
                highlights,
            });
        }
    }
}

/// Events around a search result, as `/context` gives them: `before` nearest first.
pub struct Context {
    pub before: Vec<StoredEvent>,
    pub after: Vec<StoredEvent>,
    pub start: String,
    pub end: String,
}

pub async fn context(
    core: &Core,
    conn: &mut AnyConnection,
    user_id: &str,
    event: &StoredEvent,
    before: usize,
    after: usize,
) -> Result<Context> {
    let room_id = event.room_id.as_str();
    let key = timeline::Key::of(event);
    let before_key = timeline::Key {
        pos: key.pos - 1,
        ..key
    };
    let mut before_events = Vec::new();
    if before > 0 {
        let page = timeline::page(conn, room_id, before_key, None, timeline::Dir::Backward, before as i64).await?;
        before_events = visibility::filter_visible(core, conn, user_id, room_id, page).await?;
    }
    let mut after_events = Vec::new();
    if after > 0 {
        let page = timeline::page(conn, room_id, key, None, timeline::Dir::Forward, after as i64).await?;
        after_events = visibility::filter_visible(core, conn, user_id, room_id, page).await?;
    }
    let start = before_events
        .last()
        .map(timeline::Key::of)
        .map_or(before_key, |k| timeline::Key { pos: k.pos - 1, ..k });
    let end = after_events.last().map_or(key, timeline::Key::of);
    Ok(Context {
        before: before_events,
        after: after_events,
        start: start.token(),
        end: end.token(),
    })
}

/// Display names and avatars of the given users in a room (from their membership).
pub async fn profiles(
    conn: &mut AnyConnection,
    room_id: &str,
    users: &[&str],
) -> Result<BTreeMap<String, (Option<String>, Option<String>)>> {
    let mut out = BTreeMap::new();
    for user in users {
        if out.contains_key(*user) {
            continue;
        }
        if let Some(m) = rooms::membership(conn, room_id, user).await? {
            out.insert((*user).to_owned(), (m.displayname, m.avatar_url));
        }
    }
    Ok(out)
}

/// The room's current state for `include_state`, when the user may read it.
pub async fn readable_state(
    core: &Core,
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
) -> Result<Option<Vec<StoredEvent>>> {
    if !visibility::can_read_room(conn, user_id, room_id).await? {
        return Ok(None);
    }
    let state = super::current_state(core, conn, room_id).await?;
    let ids: Vec<String> = state.values().cloned().collect();
    Ok(Some(events::get_many(conn, &ids).await?))
}

/// A search key as the spec names it, or InvalidParam.
pub fn parse_key(key: &str) -> Result<&'static str> {
    KEYS.iter()
        .find(|k| **k == key)
        .copied()
        .ok_or_else(|| Error::InvalidParam(format!("unknown search key {key:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_websearch_syntax() {
        let p = parse_term("hello \"big world\" -spam or bye");
        assert_eq!(p.fts5(), "(\"hello\" AND \"big world\" NOT \"spam\") OR (\"bye\")");
        assert_eq!(p.highlights(), vec!["big", "bye", "hello", "world"]);
    }

    #[test]
    fn operators_in_input_are_text() {
        assert_eq!(
            parse_term("NEAR(a b) AND*").fts5(),
            "(\"near\" AND \"a\" AND \"b\" AND \"and\")"
        );
        assert!(parse_term("-only -negative").groups.is_empty());
        assert!(parse_term("  !!! ").groups.is_empty());
        assert!(parse_term("\"unterminated").groups.len() == 1);
    }

    #[test]
    fn cursor_tokens() {
        assert_eq!(Cursor::parse("s42", Order::Recent).unwrap(), Cursor::Below(42));
        assert_eq!(Cursor::parse("r10", Order::Rank).unwrap(), Cursor::Skip(10));
        assert!(Cursor::parse("r10", Order::Recent).is_err());
        assert!(Cursor::parse("", Order::Rank).is_err());
        assert!(Cursor::parse("sx", Order::Recent).is_err());
        assert!(Cursor::parse("r-1", Order::Rank).is_err());
        assert!(Cursor::parse("é1", Order::Rank).is_err());
    }
}
