//! State snapshots that share structure: a state group is a parent group plus a small delta.
//! Chains are capped at `MAX_CHAIN`, after which a full snapshot starts a new chain, so
//! reading a state costs one recursive query of bounded depth. Groups never change once
//! written, so they are cached by ID.

use std::sync::Arc;

use sqlx::AnyConnection;

use crate::{events::StateMap, Db, Result};

const MAX_CHAIN: i64 = 64;

/// Loads the full state of a group.
pub async fn load(db: &Db, conn: &mut AnyConnection, group: i64) -> Result<Arc<StateMap>> {
    if let Some(state) = db.caches().state_groups.get(&group) {
        return Ok(state);
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
    let mut state = StateMap::new();
    for (_, event_type, state_key, event_id) in rows {
        match event_id {
            Some(id) => state.insert((event_type, state_key), id),
            None => state.remove(&(event_type, state_key)),
        };
    }
    let state = Arc::new(state);
    db.caches().state_groups.insert(group, state.clone());
    Ok(state)
}

/// Stores `state` as a new group, as a delta on `parent` when that chain is short enough.
pub async fn store(
    db: &Db,
    conn: &mut AnyConnection,
    room_id: &str,
    parent: Option<i64>,
    state: &StateMap,
) -> Result<i64> {
    let parent_info = match parent {
        Some(p) => {
            let row: Option<(i64,)> = sqlx::query_as("SELECT chain_len FROM state_groups WHERE group_id = $1")
                .bind(p)
                .fetch_optional(&mut *conn)
                .await?;
            row.filter(|(len,)| *len < MAX_CHAIN).map(|(len,)| (p, len))
        }
        None => None,
    };
    let (parent_group, chain_len, delta) = match parent_info {
        Some((p, len)) => {
            let parent_state = load(db, conn, p).await?;
            let mut delta: Vec<((String, String), Option<String>)> = state
                .iter()
                .filter(|(k, v)| parent_state.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            delta.extend(
                parent_state
                    .keys()
                    .filter(|k| !state.contains_key(*k))
                    .map(|k| (k.clone(), None)),
            );
            (Some(p), len + 1, delta)
        }
        None => (
            None,
            0,
            state.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
        ),
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
    for ((event_type, state_key), event_id) in delta {
        sqlx::query(
            "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(group)
        .bind(event_type)
        .bind(state_key)
        .bind(event_id)
        .execute(&mut *conn)
        .await?;
    }
    // The new group is usually read right away (it becomes current state); cache it now rather
    // than re-reading its whole chain. Should the transaction roll back, the entry is unused
    // garbage: random IDs are never handed out again.
    db.caches().state_groups.insert(group, Arc::new(state.clone()));
    Ok(group)
}
