//! Event reports as admins read them (`/_synapse/admin/v1/event_reports`): listed newest
//! first by default with Synapse's fields, each with the reported event, and deleted.

use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{contains_pattern, SqlPage};
use crate::{
    storage::{events, rooms},
    Core, Result,
};

type ReportRow = (i64, String, Option<String>, String, Option<String>, Option<i64>, i64);

const COLUMNS: &str = "id, room_id, event_id, reporter, reason, score, created_ts";

/// A page of event reports, filtered by parts of the reporter's and the room's IDs, and how
/// many match in all. `page.backwards` (Synapse's default) lists the newest first.
pub async fn list(
    core: &Core,
    user_id: Option<&str>,
    room_id: Option<&str>,
    page: SqlPage,
) -> Result<(Vec<Value>, i64)> {
    let mut clauses = vec!["event_id IS NOT NULL".to_owned()];
    let mut binds = Vec::new();
    if let Some(user_id) = user_id {
        binds.push(contains_pattern(user_id));
        clauses.push(format!("LOWER(reporter) LIKE ${} ESCAPE '\\'", binds.len()));
    }
    if let Some(room_id) = room_id {
        binds.push(contains_pattern(room_id));
        clauses.push(format!("LOWER(room_id) LIKE ${} ESCAPE '\\'", binds.len()));
    }
    let filter = clauses.join(" AND ");
    let count_text = format!("SELECT COUNT(*) FROM event_reports WHERE {filter}");
    let mut count = sqlx::query_as::<_, (i64,)>(&count_text);
    for b in &binds {
        count = count.bind(b.clone());
    }
    let (total,) = count.fetch_one(core.db.pool()).await?;
    let text = format!(
        "SELECT {COLUMNS} FROM event_reports WHERE {filter} ORDER BY created_ts {dir}, id {dir} LIMIT {} OFFSET {}",
        page.limit,
        page.from,
        dir = page.dir()
    );
    let mut query = sqlx::query_as::<_, ReportRow>(&text);
    for b in &binds {
        query = query.bind(b.clone());
    }
    let rows = query.fetch_all(core.db.pool()).await?;
    let mut conn = core.db.conn().await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(entry(&mut conn, row).await?.0);
    }
    Ok((out, total))
}

/// One report with the reported event (`event_json`), or `None` for an unknown ID.
pub async fn get(core: &Core, id: i64) -> Result<Option<Value>> {
    let mut conn = core.db.conn().await?;
    let row: Option<ReportRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM event_reports WHERE id = $1 AND event_id IS NOT NULL"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (mut out, event_json) = entry(&mut conn, row).await?;
    out["event_json"] = event_json;
    Ok(Some(out))
}

/// Deletes a report; `false` when there was none.
pub async fn delete(core: &Core, id: i64) -> Result<bool> {
    let mut tx = core.db.write().await?;
    let done = sqlx::query("DELETE FROM event_reports WHERE id = $1 AND event_id IS NOT NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// A report as Synapse lists it (with the room's name and alias and the event's sender), and
/// the reported event as stored.
async fn entry(conn: &mut AnyConnection, row: ReportRow) -> Result<(Value, Value)> {
    let (id, room_id, event_id, reporter, reason, score, created_ts) = row;
    let name = state_content(conn, &room_id, "m.room.name", "name").await?;
    let alias = state_content(conn, &room_id, "m.room.canonical_alias", "alias").await?;
    let event = match &event_id {
        Some(event_id) => events::get(conn, event_id).await?,
        None => None,
    };
    let event_json: Value = event
        .as_ref()
        .and_then(|e| serde_json::from_str(&e.json).ok())
        .unwrap_or(Value::Null);
    let report = json!({
        "id": id,
        "received_ts": created_ts,
        "room_id": room_id,
        "name": name,
        "event_id": event_id,
        "user_id": reporter,
        "reason": reason,
        "score": score,
        "sender": event.as_ref().map(|e| e.sender.clone()),
        "canonical_alias": alias,
    });
    Ok((report, event_json))
}

/// A string field of a room's current state event.
async fn state_content(conn: &mut AnyConnection, room_id: &str, kind: &str, field: &str) -> Result<Option<String>> {
    let Some(event_id) = rooms::current_state_event(conn, room_id, kind, "").await? else {
        return Ok(None);
    };
    let Some(event) = events::get(conn, &event_id).await? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&event.json).unwrap_or_default();
    Ok(json["content"][field].as_str().map(str::to_owned))
}
