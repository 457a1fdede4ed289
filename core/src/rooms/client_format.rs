//! Events as clients see them: the client format, redacted content for redacted events, and
//! `unsigned` with age, transaction ID, prev_content and the server-side aggregations
//! (latest edit `m.replace`, thread summary `m.thread`).
//!
//! A list is formatted with a fixed number of queries whatever its length: redactions,
//! replaced state and both aggregations are each fetched for the whole list at once, so an
//! initial sync or a page of history costs no query per event.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::room_rules;
use crate::{
    events::Pdu,
    storage::{
        events::{self, StoredEvent},
        state as state_store, InList, IN_CHUNK,
    },
    util::now_ms,
    Core, Result,
};

/// Who is looking: their transaction IDs are echoed back to them.
#[derive(Clone, Copy, Debug)]
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub device_id: Option<&'a str>,
}

/// One event in client format, without aggregations (used inside aggregations themselves).
pub async fn format_plain(
    core: &Core,
    conn: &mut AnyConnection,
    stored: &StoredEvent,
    viewer: Option<Viewer<'_>>,
) -> Result<Value> {
    Ok(
        format_list(core, conn, std::slice::from_ref(stored), viewer, &HashMap::new())
            .await?
            .pop()
            .unwrap_or_default(),
    )
}

/// Events in client format with aggregations.
pub async fn format(
    core: &Core,
    conn: &mut AnyConnection,
    list: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
) -> Result<Vec<Value>> {
    let aggregations = aggregations(core, conn, list, viewer, None).await?;
    format_list(core, conn, list, viewer, &aggregations).await
}

/// `format` for a sync answering up to events position `at`: the relations of each event are
/// read once for all the syncs at that position (see `Memos::relations`).
pub async fn format_at(
    core: &Core,
    conn: &mut AnyConnection,
    list: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
    at: i64,
) -> Result<Vec<Value>> {
    let aggregations = aggregations(core, conn, list, viewer, Some(at)).await?;
    format_list(core, conn, list, viewer, &aggregations).await
}

/// Formats a list; `aggregations` holds `unsigned.m.relations` by event ID.
async fn format_list(
    core: &Core,
    conn: &mut AnyConnection,
    list: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
    aggregations: &HashMap<String, Value>,
) -> Result<Vec<Value>> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    // The redaction events, and the state each state event replaced, in one query.
    let mut extra_ids: Vec<String> = list
        .iter()
        .filter_map(|e| e.redacted_by.clone())
        .filter(|id| id != crate::admin::users::ERASED)
        .collect();
    let mut replaced: HashMap<&str, String> = HashMap::new();
    for e in list {
        if let (Some(key), Some(before)) = (&e.state_key, e.state_before) {
            let state = state_store::load(&core.db, conn, before).await?;
            if let Some(prev) = state.get(&(e.event_type.clone(), key.clone())) {
                replaced.insert(e.event_id.as_str(), prev.clone());
                extra_ids.push(prev.clone());
            }
        }
    }
    extra_ids.sort();
    extra_ids.dedup();
    let extra: HashMap<String, StoredEvent> = events::get_many(conn, &extra_ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();

    let mut out = Vec::with_capacity(list.len());
    for stored in list {
        let (_, rules) = room_rules(core, conn, &stored.room_id).await?;
        let pdu = Pdu::from_stored(&stored.event_id, &stored.json, &rules)?;
        let because = match stored.redacted_by.as_ref().and_then(|id| extra.get(id)) {
            Some(r) => Some(Pdu::from_stored(&r.event_id, &r.json, &rules)?.client_json(&rules, None)),
            None => None,
        };
        let erased = stored.redacted_by.as_deref() == Some(crate::admin::users::ERASED);
        let mut event = if erased {
            // An erased sender's event: pruned as a redaction would, with no redaction event.
            let mut event = pdu.client_json(&rules, Some(&json!({})));
            if let Some(Value::Object(unsigned)) = event.get_mut("unsigned") {
                unsigned.remove("redacted_because");
            }
            event
        } else {
            pdu.client_json(&rules, because.as_ref())
        };
        let mut unsigned = event.get("unsigned").cloned().unwrap_or_else(|| json!({}));
        unsigned["age"] = json!((now_ms() - stored.origin_server_ts).max(0));
        if let (Some(viewer), Some(txn_id)) = (viewer, &stored.txn_id) {
            if viewer.user_id == stored.sender
                && viewer.device_id.is_some()
                && viewer.device_id == stored.txn_device.as_deref()
            {
                unsigned["transaction_id"] = json!(txn_id);
            }
            // A delayed event's sender sees which of theirs it was (MSC4140).
            if viewer.user_id == stored.sender
                && stored.txn_device.as_deref() == Some(crate::delayed_events::TXN_DEVICE)
            {
                unsigned["org.matrix.msc4140.delay_id"] = json!(txn_id);
            }
        }
        if let Some(because) = because {
            unsigned["redacted_because"] = because;
        }
        if let Some(prev) = replaced.get(stored.event_id.as_str()).and_then(|id| extra.get(id)) {
            // A redacted (or erased) previous state shows its redacted content, as the event does.
            let pruned = prev.redacted_by.is_some().then(|| json!({}));
            let prev_json = Pdu::from_stored(&prev.event_id, &prev.json, &rules)?.client_json(&rules, pruned.as_ref());
            unsigned["prev_content"] = prev_json["content"].clone();
            unsigned["replaces_state"] = json!(prev.event_id);
            unsigned["prev_sender"] = json!(prev.sender);
        }
        if let Some(relations) = aggregations
            .get(stored.event_id.as_str())
            .filter(|_| stored.redacted_by.is_none())
        {
            unsigned["m.relations"] = relations.clone();
        }
        event["unsigned"] = unsigned;
        out.push(event);
    }
    Ok(out)
}

/// Edits and thread replies pointing at any of `targets`: `(target, rel_type, event)`, newest
/// first, in one query per `IN_CHUNK` targets.
async fn related(conn: &mut AnyConnection, targets: &[&str]) -> Result<Vec<(String, String, StoredEvent)>> {
    let mut out = Vec::new();
    let columns = events::COLUMNS
        .split(", ")
        .map(|c| format!("events.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    for chunk in targets.chunks(IN_CHUNK) {
        let list = InList::new(conn, 1, chunk.len());
        let sql = format!(
            "SELECT r.relates_to, r.rel_type, {columns} FROM event_relations r JOIN events ON events.event_id = r.event_id
             WHERE r.rel_type IN ('m.replace', 'm.thread') AND r.relates_to IN ({})
             AND events.stream_pos IS NOT NULL ORDER BY events.stream_pos DESC",
            list.sql()
        );
        let mut q = sqlx::query(&sql);
        for t in list.binds(chunk) {
            q = q.bind(t);
        }
        for row in q.fetch_all(&mut *conn).await? {
            use sqlx::Row;
            out.push((row.try_get(0)?, row.try_get(1)?, events::from_row_at(&row, 2)?));
        }
    }
    Ok(out)
}

/// `related` through the memo of relations read at events position `at`.
async fn related_at(
    core: &Core,
    conn: &mut AnyConnection,
    targets: &[&str],
    at: i64,
) -> Result<Vec<(String, String, StoredEvent)>> {
    let mut out = Vec::new();
    let mut misses = Vec::new();
    for target in targets {
        match core.memos.relations.get(&(at, (*target).to_owned())) {
            Some(found) => out.extend(
                found
                    .iter()
                    .map(|(rel, e)| ((*target).to_owned(), rel.clone(), e.clone())),
            ),
            None => misses.push(*target),
        }
    }
    if misses.is_empty() {
        return Ok(out);
    }
    let mut by_target: HashMap<String, Vec<(String, StoredEvent)>> = HashMap::new();
    for (target, rel, event) in related(conn, &misses).await? {
        by_target.entry(target).or_default().push((rel, event));
    }
    for target in misses {
        let found = by_target.remove(target).unwrap_or_default();
        out.extend(found.iter().map(|(rel, e)| (target.to_owned(), rel.clone(), e.clone())));
        core.memos
            .relations
            .set((at, target.to_owned()), std::sync::Arc::new(found));
    }
    Ok(out)
}

/// `unsigned.m.relations` per event ID for events that have edits or thread replies; `at`,
/// when given, is the events position a sync answers up to.
async fn aggregations(
    core: &Core,
    conn: &mut AnyConnection,
    list: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
    at: Option<i64>,
) -> Result<HashMap<String, Value>> {
    let targets: Vec<&str> = list
        .iter()
        .filter(|e| e.redacted_by.is_none())
        .map(|e| e.event_id.as_str())
        .collect();
    let senders: HashMap<&str, &str> = list.iter().map(|e| (e.event_id.as_str(), e.sender.as_str())).collect();
    let mut result: HashMap<String, Value> = HashMap::new();

    if targets.is_empty() {
        return Ok(result);
    }
    let related = match at {
        Some(at) => related_at(core, conn, &targets, at).await?,
        None => related(conn, &targets).await?,
    };
    let (replaces, thread_replies): (Vec<_>, Vec<_>) = related
        .into_iter()
        .partition(|(_, rel_type, _)| rel_type == "m.replace");

    // Latest edit by the original sender (m.replace); redacted edits do not count.
    let mut edits: HashMap<String, StoredEvent> = HashMap::new();
    for (target, _, edit) in replaces {
        let newer = |old: &StoredEvent| (edit.origin_server_ts, &edit.event_id) > (old.origin_server_ts, &old.event_id);
        if edit.redacted_by.is_none()
            && senders.get(target.as_str()) == Some(&edit.sender.as_str())
            && edits.get(&target).is_none_or(newer)
        {
            edits.insert(target, edit);
        }
    }
    let (targets_of_edits, edit_events): (Vec<String>, Vec<StoredEvent>) = edits.into_iter().unzip();
    let formatted = format_list(core, conn, &edit_events, viewer, &HashMap::new()).await?;
    for (target, edit) in targets_of_edits.into_iter().zip(formatted) {
        result.entry(target).or_insert_with(|| json!({}))["m.replace"] = edit;
    }

    // Thread summaries: count, latest reply, whether the viewer took part.
    let mut threads: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    for (target, _, reply) in thread_replies {
        threads.entry(target).or_default().push(reply);
    }
    let latest: Vec<StoredEvent> = threads.values().map(|replies| replies[0].clone()).collect();
    let latest = format_list(core, conn, &latest, viewer, &HashMap::new()).await?;
    for ((target, replies), latest) in threads.into_iter().zip(latest) {
        let participated = viewer.is_some_and(|v| {
            senders.get(target.as_str()) == Some(&v.user_id) || replies.iter().any(|e| e.sender == v.user_id)
        });
        result.entry(target).or_insert_with(|| json!({}))["m.thread"] = json!({
            "latest_event": latest,
            "count": replies.len(),
            "current_user_participated": participated,
        });
    }
    Ok(result)
}
