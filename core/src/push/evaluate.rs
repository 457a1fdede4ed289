//! Push rule evaluation for a new event, inside the transaction that persists it: for every
//! local member who should hear about it, the actions their rules give, stored in
//! `event_push_actions` (which `/sync` counts and `/notifications` and the pusher read).

use ruma::{
    events::{
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        TimelineEventType,
    },
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    room_version_rules::RoomVersionRules,
    serde::Raw,
    OwnedUserId, UInt,
};
use serde_json::Value;
use sqlx::AnyConnection;

use super::rules as user_rules;
use crate::{
    db::batch::Batch,
    events::{cache, Pdu, StateMap},
    storage::rooms::PushMember,
    util::now_ms,
    Core, Error, Result,
};

/// One local user the event may notify.
struct Recipient {
    user_id: OwnedUserId,
    display_name: String,
    stored_rules: Option<String>,
}

/// What evaluation decided for one recipient.
struct Decision {
    user_id: OwnedUserId,
    highlight: bool,
    actions: Vec<Action>,
}

/// Evaluates `pdu` for every joined local member except the sender, and for the invitee of an
/// invite, and adds the notifying outcomes to `batch`, at the position it allocates. Only
/// outcomes that notify are stored: they are all `/sync` counts and the pusher needs.
///
/// Memberships are read as they were before the event (its own writes are in the batch); the
/// event's effect on its target is taken from the event itself. `joined`, when given, are the
/// room's joined members as read under its lock (see `rooms::lock_for_send`).
pub async fn evaluate<'q>(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    pdu: &'q Pdu,
    state: &StateMap,
    joined: Option<&[PushMember]>,
    batch: &mut Batch<'q>,
) -> Result<()> {
    settle_on_join(core, pdu, batch);
    let (recipients, member_count) = recipients(core, conn, pdu, joined).await?;
    if recipients.is_empty() {
        return Ok(());
    }
    let event = pdu.client_json(rules, None);
    // Flattened once for every recipient (ruleset.get_actions would flatten per call, which
    // made each event cost grow with the room's size).
    let raw: Raw<Value> = Raw::new(&event).map_err(Error::internal)?;
    let flat = FlattenedJson::from_raw(&raw);
    let power_levels = power_levels(&core.db, conn, rules, state).await?;
    let member_count = UInt::try_from(member_count).unwrap_or_default();

    let mut decisions = Vec::new();
    for r in recipients {
        let ruleset = user_rules::parsed(&r.user_id, r.stored_rules.as_deref());
        let ctx = PushConditionRoomCtx::new(pdu.room_id.clone(), member_count, r.user_id.clone(), r.display_name)
            .with_power_levels(power_levels.clone());
        let mut actions: &[Action] = &[];
        for rule in ruleset.iter() {
            if rule.applies(&flat, &ctx).await {
                actions = rule.actions();
                break;
            }
        }
        if actions.iter().any(Action::should_notify) {
            decisions.push(Decision {
                user_id: r.user_id,
                highlight: actions.iter().any(Action::is_highlight),
                actions: actions.to_vec(),
            });
        }
    }
    store(batch, pdu, thread_id(&event), &decisions)
}

/// When a local user joins, what notified them before (their invite, an earlier membership)
/// stops counting as unread: counts start at the join, as in other servers. The rows stay for
/// `/notifications`.
fn settle_on_join<'q>(core: &Core, pdu: &'q Pdu, batch: &mut Batch<'q>) {
    let Some(target) = pdu.state_key.as_deref() else {
        return;
    };
    if pdu.kind != TimelineEventType::RoomMember || pdu.content_value()["membership"] != "join" {
        return;
    }
    if !OwnedUserId::try_from(target).is_ok_and(|u| core.is_local(&u)) {
        return;
    }
    batch
        .push(
            "UPDATE event_push_actions SET notify = 0
             WHERE user_id = $1 AND room_id = $2 AND stream_pos < {pos} AND notify = 1",
            2,
        )
        .bind(target)
        .bind(pdu.room_id.as_str());
}

/// Local joined members (with their display names and stored rules, in one query) other than
/// the sender, plus a local invitee; and the room's joined member count.
///
/// For a membership event only members with rules of their own and the event's target are
/// asked: the default rules never notify anyone else of one (`.m.rule.member_event` comes
/// before every rule that could), and joins would otherwise cost more the bigger the room.
async fn recipients(
    core: &Core,
    conn: &mut AnyConnection,
    pdu: &Pdu,
    joined: Option<&[PushMember]>,
) -> Result<(Vec<Recipient>, u64)> {
    let mut rows: Vec<PushMember>;
    let member_count;
    if pdu.kind == TimelineEventType::RoomMember {
        // Joined members with rules of their own, found from the rules' side (CROSS JOIN keeps
        // that order in SQLite; PostgreSQL's planner orders joins by its statistics): only
        // local users have rules, while a room's members can be thousands of remote users.
        // The first arm is the target's own rules, if any.
        let target = pdu.state_key.clone().unwrap_or_default();
        let content = pdu.content_value();
        let membership = content["membership"].as_str().unwrap_or_default();
        rows = sqlx::query_as(
            "SELECT p.user_id, CAST(NULL AS TEXT), p.ruleset FROM push_rules p WHERE p.user_id = $2
             UNION ALL
             SELECT m.user_id, m.displayname, p.ruleset FROM push_rules p
             CROSS JOIN room_memberships m
             WHERE m.user_id = p.user_id AND m.room_id = $1 AND m.membership = 'join' AND m.user_id <> $2",
        )
        .bind(pdu.room_id.as_str())
        .bind(&target)
        .fetch_all(&mut *conn)
        .await?;
        // The other arm leaves the target out, so a row of theirs is their rules.
        let target_rules = match rows.iter().position(|r| r.0 == target) {
            Some(i) => rows.remove(i).2,
            None => None,
        };
        // The target counts when this event joins or invites them.
        if membership == "join" || membership == "invite" {
            let display_name = content["displayname"].as_str().map(str::to_owned);
            rows.push((target.clone(), display_name, target_rules));
        }
        // Only rules of a user's own can ask for the member count of a membership event (the
        // default ones decide before any `room_member_count` condition), so it is counted
        // only when someone has them.
        member_count = if rows.iter().any(|r| r.2.is_some()) {
            let (others,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM room_memberships WHERE room_id = $1 AND membership = 'join' AND user_id <> $2",
            )
            .bind(pdu.room_id.as_str())
            .bind(&target)
            .fetch_one(&mut *conn)
            .await?;
            others as u64 + u64::from(membership == "join")
        } else {
            0
        };
    } else if let Some(joined) = joined {
        rows = joined.to_vec();
        member_count = rows.len() as u64;
    } else {
        rows = sqlx::query_as(
            "SELECT m.user_id, m.displayname, p.ruleset FROM room_memberships m
             LEFT JOIN push_rules p ON p.user_id = m.user_id
             WHERE m.room_id = $1 AND m.membership = 'join'",
        )
        .bind(pdu.room_id.as_str())
        .fetch_all(&mut *conn)
        .await?;
        member_count = rows.len() as u64;
    }
    let recipients = rows
        .into_iter()
        .filter(|r| r.0 != pdu.sender.as_str())
        .filter_map(|(user_id, display_name, stored_rules)| {
            let user_id = OwnedUserId::try_from(user_id).ok()?;
            core.is_local(&user_id).then(|| Recipient {
                display_name: display_name.unwrap_or_else(|| user_id.localpart().to_owned()),
                user_id,
                stored_rules,
            })
        })
        .collect();
    Ok((recipients, member_count))
}

/// The power levels context (for `sender_notification_permission`), from the room state.
async fn power_levels(
    db: &crate::Db,
    conn: &mut AnyConnection,
    rules: &RoomVersionRules,
    state: &StateMap,
) -> Result<PushConditionPowerLevelsCtx> {
    let ids: Vec<String> = ["m.room.power_levels", "m.room.create"]
        .iter()
        .filter_map(|t| state.get(&((*t).to_owned(), String::new())).cloned())
        .collect();
    let mut content: Option<RoomPowerLevelsEventContent> = None;
    let mut creators: Vec<OwnedUserId> = Vec::new();
    for event in cache::load(db, conn, rules, &ids).await? {
        let pdu = &event.pdu;
        if pdu.kind == TimelineEventType::RoomPowerLevels {
            content = serde_json::from_str(pdu.content.get()).ok();
        } else {
            creators.push(pdu.sender.clone());
            if rules.authorization.additional_room_creators {
                let extra = pdu.content_value()["additional_creators"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                creators.extend(
                    extra
                        .iter()
                        .filter_map(|c| c.as_str())
                        .filter_map(|c| OwnedUserId::try_from(c).ok()),
                );
            }
        }
    }
    let source = content.map(RoomPowerLevelsSource::Original).unwrap_or_default();
    Ok(RoomPowerLevels::new(source, &rules.authorization, creators).into())
}

/// `main`, or the thread root for an event in a thread.
fn thread_id(event: &Value) -> String {
    let rel = &event["content"]["m.relates_to"];
    match (rel["rel_type"].as_str(), rel["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => "main".to_owned(),
    }
}

/// Adds the decisions to the batch, many rows per statement.
fn store<'q>(batch: &mut Batch<'q>, pdu: &'q Pdu, thread_id: String, decisions: &[Decision]) -> Result<()> {
    let ts = now_ms();
    for chunk in decisions.chunks(100) {
        // (user, highlight, actions) per recipient; the shared values and the position appear
        // once (on PostgreSQL each `{pos}` is a subplan of its own). `WHERE true` keeps
        // SQLite from reading `ON CONFLICT` as a join's `ON`.
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = 5 + i * 3;
                format!("(${}, ${}, ${})", b, b + 1, b + 2)
            })
            .collect();
        let sql = format!(
            "INSERT INTO event_push_actions (room_id, event_id, user_id, stream_pos, thread_id, notify, highlight, actions, ts)
             SELECT $1, $2, v.column1, {{pos}}, $3, 1, v.column2, v.column3, $4 FROM (VALUES {}) AS v
             WHERE true ON CONFLICT DO NOTHING",
            placeholders.join(", ")
        );
        let mut b = batch
            .push(&sql, 4 + 3 * chunk.len())
            .bind(pdu.room_id.as_str())
            .bind(pdu.event_id.as_str())
            .bind(thread_id.clone())
            .bind(ts);
        for d in chunk {
            let actions = serde_json::to_string(&d.actions).map_err(Error::internal)?;
            b = b.bind(d.user_id.to_string()).bind(i64::from(d.highlight)).bind(actions);
        }
    }
    Ok(())
}
