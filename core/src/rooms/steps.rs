//! What the room writer adds to the pipeline's commit of an accepted event (see
//! `events::pipeline::Steps`): a redaction marks its target, a relation is indexed, the text
//! goes to search, and push rules decide each member's notifications.

use ruma::{events::TimelineEventType, room_version_rules::RoomVersionRules};
use serde_json::Value;
use sqlx::AnyConnection;

use crate::{
    db::batch::Batch,
    events::{
        pipeline::{Accepted, Steps},
        Pdu, StateMap,
    },
    storage::events,
    Core, Result,
};

/// The steps every room event takes once accepted.
pub struct RoomSteps;

impl Steps for RoomSteps {
    async fn accepted<'q>(
        &self,
        core: &Core,
        conn: &mut AnyConnection,
        rules: &RoomVersionRules,
        pdu: &'q Pdu,
        at: &Accepted<'_>,
        batch: &mut Batch<'q>,
    ) -> Result<()> {
        if pdu.kind == TimelineEventType::RoomRedaction {
            apply_redaction(conn, rules, pdu, at.before, batch).await?;
        }
        store_relation(batch, pdu);
        super::search::index_event(batch, pdu);
        if at.backfilled {
            // Old history notifies nobody: its members read (or missed) it long ago.
            return Ok(());
        }
        crate::push::evaluate(
            core,
            conn,
            rules,
            pdu,
            at.current,
            at.head.push_members.as_deref(),
            batch,
        )
        .await
    }
}

/// Marks the target redacted when the redaction is allowed: same sender, or a sender with the
/// power to redact others (checked against the state before the redaction).
async fn apply_redaction<'q>(
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &'q Pdu,
    state: &StateMap,
    batch: &mut Batch<'q>,
) -> Result<()> {
    let Some(target_id) = &pdu.redacts else { return Ok(()) };
    let Some(target) = events::get(conn, target_id.as_str()).await? else {
        return Ok(());
    };
    if target.room_id != pdu.room_id.as_str() {
        return Ok(());
    }
    let allowed = target.sender == pdu.sender.as_str()
        || super::power::user_level(conn, rules, state, pdu.sender.as_str()).await?
            >= super::power::action_level(conn, rules, state, "redact").await?;
    if allowed {
        events::set_redacted_by(batch, target_id.as_str(), pdu.event_id.as_str());
    }
    Ok(())
}

/// Indexes the event's `m.relates_to` for `/relations`, `/threads` and aggregations.
fn store_relation<'q>(batch: &mut Batch<'q>, pdu: &'q Pdu) {
    let content = pdu.content_value();
    let Some(rel) = content.get("m.relates_to") else {
        return;
    };
    let (Some(rel_type), Some(target)) = (
        rel.get("rel_type").and_then(Value::as_str),
        rel.get("event_id").and_then(Value::as_str),
    ) else {
        return;
    };
    let key = rel.get("key").and_then(Value::as_str);
    batch
        .push(
            "INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, aggregation_key)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            5,
        )
        .bind(pdu.event_id.as_str())
        .bind(pdu.room_id.as_str())
        .bind(target.to_owned())
        .bind(rel_type.to_owned())
        .bind(key.map(str::to_owned));
}
