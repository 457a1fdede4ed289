//! Events as clients see them: the client format, redacted content for redacted events, and
//! `unsigned` with age, transaction ID, prev_content and the server-side aggregations
//! (latest edit `m.replace`, thread summary `m.thread`).

use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::room_rules;
use crate::{
    events::Pdu,
    storage::{events::{self, StoredEvent}, state as state_store},
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
pub async fn format_plain(core: &Core, conn: &mut AnyConnection, stored: &StoredEvent, viewer: Option<Viewer<'_>>) -> Result<Value> {
    let (_, rules) = room_rules(core, conn, &stored.room_id).await?;
    let pdu = Pdu::from_stored(&stored.event_id, &stored.json, &rules)?;
    let because = match &stored.redacted_by {
        Some(id) => match events::get(conn, id).await? {
            Some(r) => Some(Pdu::from_stored(&r.event_id, &r.json, &rules)?.client_json(&rules, None)),
            None => None,
        },
        None => None,
    };
    let mut out = pdu.client_json(&rules, because.as_ref());
    let mut unsigned = out.get("unsigned").cloned().unwrap_or_else(|| json!({}));
    unsigned["age"] = json!((now_ms() - stored.origin_server_ts).max(0));
    if let (Some(viewer), Some(txn_id)) = (viewer, &stored.txn_id) {
        if viewer.user_id == stored.sender && viewer.device_id.is_some() && viewer.device_id == stored.txn_device.as_deref() {
            unsigned["transaction_id"] = json!(txn_id);
        }
    }
    if let Some(because) = because {
        unsigned["redacted_because"] = because;
    }
    if let (Some(key), Some(before)) = (&stored.state_key, stored.state_before) {
        let state = state_store::load(&core.db, conn, before).await?;
        if let Some(prev_id) = state.get(&(stored.event_type.clone(), key.clone())) {
            if let Some(prev) = events::get(conn, prev_id).await? {
                let prev_pdu = Pdu::from_stored(&prev.event_id, &prev.json, &rules)?;
                let prev_json = prev_pdu.client_json(&rules, None);
                unsigned["prev_content"] = prev_json["content"].clone();
                unsigned["replaces_state"] = json!(prev.event_id);
                unsigned["prev_sender"] = json!(prev.sender);
            }
        }
    }
    out["unsigned"] = unsigned;
    Ok(out)
}

/// Events in client format with aggregations.
pub async fn format(core: &Core, conn: &mut AnyConnection, list: &[StoredEvent], viewer: Option<Viewer<'_>>) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(list.len());
    for stored in list {
        let mut event = format_plain(core, conn, stored, viewer).await?;
        if stored.redacted_by.is_none() {
            let relations = aggregations(core, conn, stored, viewer).await?;
            if !relations.as_object().is_some_and(|o| o.is_empty()) {
                event["unsigned"]["m.relations"] = relations;
            }
        }
        out.push(event);
    }
    Ok(out)
}

async fn aggregations(core: &Core, conn: &mut AnyConnection, target: &StoredEvent, viewer: Option<Viewer<'_>>) -> Result<Value> {
    let mut relations = json!({});
    // Latest edit by the original sender (m.replace); redacted edits do not count.
    let edits = events::query(
        conn,
        "WHERE event_id IN (SELECT event_id FROM event_relations WHERE relates_to = $1 AND rel_type = 'm.replace')
           AND sender = $2 AND redacted_by IS NULL AND stream_pos IS NOT NULL
         ORDER BY origin_server_ts DESC, event_id DESC LIMIT 1",
        &[&target.event_id, &target.sender],
    )
    .await?;
    if let Some(edit) = edits.first() {
        relations["m.replace"] = format_plain(core, conn, edit, viewer).await?;
    }
    // Thread summary.
    let thread = events::query(
        conn,
        "WHERE event_id IN (SELECT event_id FROM event_relations WHERE relates_to = $1 AND rel_type = 'm.thread')
           AND stream_pos IS NOT NULL ORDER BY stream_pos DESC",
        &[&target.event_id],
    )
    .await?;
    if let Some(latest) = thread.first() {
        let participated = viewer.is_some_and(|v| v.user_id == target.sender || thread.iter().any(|e| e.sender == v.user_id));
        relations["m.thread"] = json!({
            "latest_event": format_plain(core, conn, latest, viewer).await?,
            "count": thread.len(),
            "current_user_participated": participated,
        });
    }
    Ok(relations)
}
