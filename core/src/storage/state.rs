//! State snapshots that share structure: a state group is a parent group plus a small delta.
//! Chains are capped at `MAX_CHAIN`, after which a full snapshot starts a new chain, so
//! reading a state costs one recursive query of bounded depth. Groups never change once
//! written, so they are cached by ID (see `StateGroupWeighter` for the cache's bound).

use std::sync::Arc;

use sqlx::AnyConnection;

use crate::{events::StateMap, Db, Result};

const MAX_CHAIN: i64 = 64;

/// Rows per multi-row insert of group entries (four bound values each).
const INSERT_CHUNK: usize = 100;

/// A group as cached: its full state and the number of deltas between it and its snapshot.
#[derive(Clone)]
pub struct CachedGroup {
    pub state: Arc<StateMap>,
    pub chain_len: i64,
}

/// Weighs a cached group by its number of entries, so the cache holds many small rooms'
/// states or a few huge ones within the same memory.
#[derive(Clone)]
pub struct StateGroupWeighter;

impl quick_cache::Weighter<i64, CachedGroup> for StateGroupWeighter {
    fn weight(&self, _group: &i64, cached: &CachedGroup) -> u64 {
        cached.state.len() as u64 + 1
    }
}

/// Loads the full state of a group.
pub async fn load(db: &Db, conn: &mut AnyConnection, group: i64) -> Result<Arc<StateMap>> {
    Ok(load_cached(db, conn, group).await?.state)
}

/// The state of `group`, or the empty state for none (a room before its create event, an
/// event stored without state).
pub async fn load_or_empty(db: &Db, conn: &mut AnyConnection, group: Option<i64>) -> Result<Arc<StateMap>> {
    match group {
        Some(g) => load(db, conn, g).await,
        None => Ok(Arc::new(StateMap::new())),
    }
}

async fn load_cached(db: &Db, conn: &mut AnyConnection, group: i64) -> Result<CachedGroup> {
    if let Some(cached) = db.caches().state_groups.get(&group) {
        return Ok(cached);
    }
    let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "WITH RECURSIVE chain(group_id, parent_group, lvl) AS (
             SELECT group_id, parent_group, 0 FROM state_groups WHERE group_id = $1
             UNION ALL
             SELECT g.group_id, g.parent_group, c.lvl + 1 FROM state_groups g JOIN chain c ON g.group_id = c.parent_group
         )
         SELECT c.lvl, e.event_type, e.state_key, e.event_id
         FROM chain c JOIN state_group_entries e ON e.group_id = c.group_id
         ORDER BY c.lvl DESC",
    )
    .bind(group)
    .fetch_all(conn)
    .await?;
    // The deepest level with entries is the snapshot (a snapshot of an empty state has none,
    // which only makes its chains a little longer).
    let chain_len = rows.first().map_or(0, |r| r.0);
    let mut state = StateMap::new();
    for (_, event_type, state_key, event_id) in rows {
        match event_id {
            Some(id) => state.insert((event_type, state_key), id),
            None => state.remove(&(event_type, state_key)),
        };
    }
    let cached = CachedGroup {
        state: Arc::new(state),
        chain_len,
    };
    db.caches().state_groups.insert(group, cached.clone());
    Ok(cached)
}

/// What turns `old` into `new`: changed or added entries with their new event, removed ones
/// with `None`, in key order. Subtrees the two maps share (a state and the state derived from
/// it) are skipped unread, so this costs the size of the change, not of the room.
pub fn diff<'a>(old: &'a StateMap, new: &'a StateMap) -> Vec<(&'a (String, String), Option<&'a String>)> {
    old.diff(new)
        .map(|item| match item {
            imbl::ordmap::DiffItem::Add(key, event_id) => (key, Some(event_id)),
            imbl::ordmap::DiffItem::Update {
                new: (key, event_id), ..
            } => (key, Some(event_id)),
            imbl::ordmap::DiffItem::Remove(key, _) => (key, None),
        })
        .collect()
}

/// Stores `state` as a new group, as a delta on `parent` when that chain is short enough.
pub async fn store(
    db: &Db,
    conn: &mut AnyConnection,
    room_id: &str,
    parent: Option<i64>,
    state: Arc<StateMap>,
) -> Result<i64> {
    let parent = match parent {
        Some(p) => Some((p, load_cached(db, conn, p).await?)).filter(|(_, c)| c.chain_len < MAX_CHAIN),
        None => None,
    };
    let empty = StateMap::new();
    let (parent_group, chain_len, delta) = match &parent {
        Some((p, cached)) => (Some(*p), cached.chain_len + 1, diff(&cached.state, &state)),
        None => (None, 0, diff(&empty, &state)),
    };
    // Random IDs are never reused, not even after a rolled-back transaction, so the cache of
    // groups by ID can never hold a stale entry.
    let group = rand::random::<i64>() & i64::MAX;
    sqlx::query("INSERT INTO state_groups (group_id, room_id, parent_group, chain_len) VALUES ($1, $2, $3, $4)")
        .bind(group)
        .bind(room_id)
        .bind(parent_group)
        .bind(chain_len)
        .execute(&mut *conn)
        .await?;
    for chunk in delta.chunks(INSERT_CHUNK) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, ${}, ${}, ${})", 3 * i + 2, 3 * i + 3, 3 * i + 4))
            .collect();
        let sql = format!(
            "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql).persistent(chunk.len() <= 2).bind(group);
        for ((event_type, state_key), event_id) in chunk {
            q = q
                .bind(event_type.as_str())
                .bind(state_key.as_str())
                .bind(event_id.map(String::as_str));
        }
        q.execute(&mut *conn).await?;
    }
    // The new group is usually read right away (it becomes current state); cache it now rather
    // than re-reading its whole chain. Should the transaction roll back, the entry is unused
    // garbage: random IDs are never handed out again.
    db.caches().state_groups.insert(group, CachedGroup { state, chain_len });
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> StateMap {
        entries
            .iter()
            .map(|(k, v)| ((k.to_string(), String::new()), v.to_string()))
            .collect()
    }

    #[test]
    fn diff_reports_changes_additions_and_removals_in_key_order() {
        let old = map(&[("a", "1"), ("b", "2"), ("d", "4")]);
        let new = map(&[("b", "2b"), ("c", "3"), ("d", "4"), ("e", "5")]);
        let got: Vec<(String, Option<String>)> = diff(&old, &new)
            .into_iter()
            .map(|(k, v)| (k.0.clone(), v.cloned()))
            .collect();
        let want = vec![
            ("a".to_string(), None),
            ("b".to_string(), Some("2b".to_string())),
            ("c".to_string(), Some("3".to_string())),
            ("e".to_string(), Some("5".to_string())),
        ];
        assert_eq!(got, want);
        assert!(diff(&new, &new).is_empty());
    }

    /// A state derived from another (as the state after an event is from the state before it)
    /// differs by exactly the changed entry, and maps built apart with equal contents by none.
    #[test]
    fn diff_of_large_related_and_unrelated_maps() {
        let members: Vec<(String, String)> = (0..5000).map(|i| (format!("@u{i}:x"), format!("$e{i}"))).collect();
        let build = || -> StateMap {
            members
                .iter()
                .map(|(u, e)| (("m.room.member".to_owned(), u.clone()), e.clone()))
                .collect()
        };
        let before = build();
        let mut after = before.clone();
        after.insert(("m.room.member".into(), "@u2500:x".into()), "$new".into());
        after.insert(("m.room.name".into(), String::new()), "$name".into());
        let got: Vec<(String, Option<String>)> = diff(&before, &after)
            .into_iter()
            .map(|(k, v)| (k.1.clone(), v.cloned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("@u2500:x".to_string(), Some("$new".to_string())),
                (String::new(), Some("$name".to_string())),
            ]
        );
        assert!(diff(&before, &build()).is_empty());
        assert_eq!(diff(&after, &before).len(), 2);
    }
}
