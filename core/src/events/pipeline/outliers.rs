//! Many outliers at once: a room's state and auth chain as another server sends them (the
//! answer to `send_join`, `/event_auth`, `/state`), thousands of events for a big room.
//!
//! Each event passes the checks `prepare` runs with `StateAt::Unknown` (format, signatures and
//! hashes, auth against its own auth events), but the batch shares the work: the events
//! already stored are found in one query, signatures are verified on every core, each event's
//! auth events are looked up among the batch's events checked before it (the batch is put in
//! the order of its auth edges) or else read once from the database, and `store_outliers`
//! writes a chunk of checked events in one write batch.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    events::TimelineEventType, room_version_rules::RoomVersionRules, signatures::PublicKeyMap, state_res, EventId,
    OwnedEventId,
};
use sqlx::AnyConnection;

use super::{commit::RowText, prepare::verify, Checked};
use crate::{
    events::{cache, Pdu},
    storage::events::{self, Slot},
    Core, Error, Result,
};

/// The keys each event's signatures are verified with, looked up by the workers that verify.
pub type KeysFor = Arc<dyn Fn(&Pdu) -> PublicKeyMap + Send + Sync>;

/// What `prepare_outliers` made of a batch.
#[derive(Default)]
pub struct PreparedOutliers {
    /// Checked, in an order where each event's auth events come before it: store them with
    /// `store_outliers` in that order (rejected ones included, as rejected).
    pub checked: Vec<Checked>,
    /// Refused and left out: a bad format, or signatures that do not verify.
    pub refused: Vec<(OwnedEventId, String)>,
    /// Events whose auth events are neither stored nor checked in this batch, with the auth
    /// events they lack (outside the batch: fetch them and try again).
    pub missing: Vec<(Pdu, Vec<OwnedEventId>)>,
    /// Events of the batch that were already stored.
    pub known: usize,
}

/// Runs `prepare`'s checks for outliers on every event of `pdus` (from another server,
/// verified with `keys`). Nothing is written.
pub async fn prepare_outliers(
    core: &Core,
    conn: &mut AnyConnection,
    rules: &Arc<RoomVersionRules>,
    pdus: Vec<Pdu>,
    keys: KeysFor,
) -> Result<PreparedOutliers> {
    let mut out = PreparedOutliers::default();
    // Each event once, and only those not stored yet.
    let mut seen = HashSet::with_capacity(pdus.len());
    let pdus: Vec<Pdu> = pdus.into_iter().filter(|p| seen.insert(p.event_id.clone())).collect();
    drop(seen);
    let ids: Vec<String> = pdus.iter().map(|p| p.event_id.to_string()).collect();
    let known = events::known(conn, &ids).await?;
    drop(ids);
    out.known = known.len();
    let pdus: Vec<Pdu> = pdus
        .into_iter()
        .filter(|p| !known.contains(p.event_id.as_str()))
        .collect();

    // Format, signatures and hashes: no database, on every core.
    let mut verified = Vec::with_capacity(pdus.len());
    for (pdu, result) in verify_all(rules, pdus, keys).await? {
        match result {
            Ok(pdu) => verified.push(pdu),
            Err(e) => out.refused.push((pdu, e.to_string())),
        }
    }

    // Auth events outside the batch, read once.
    let auth_ids_of = |pdu: &Pdu| -> Vec<OwnedEventId> {
        let mut ids = pdu.auth_events.clone();
        // From v12 the create event is not listed in auth_events; its ID is the room ID's.
        if rules.authorization.room_create_event_id_as_room_id && pdu.kind != TimelineEventType::RoomCreate {
            ids.extend(EventId::parse(format!("${}", &pdu.room_id.as_str()[1..])).ok());
        }
        ids
    };
    let in_batch: HashSet<OwnedEventId> = verified.iter().map(|p| p.event_id.clone()).collect();
    let outside: Vec<String> = verified
        .iter()
        .flat_map(&auth_ids_of)
        .filter(|id| !in_batch.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let mut by_id: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for stored in cache::load_checked(&core.db, conn, rules, &outside).await? {
        by_id.insert(stored.pdu.event_id.clone(), Arc::new(stored.pdu.clone()));
    }
    drop(outside);

    // Auth against each event's own auth events, in the order of the auth edges.
    let mut checked: Vec<(Arc<Pdu>, Option<String>)> = Vec::with_capacity(verified.len());
    for pdu in auth_order(verified, &in_batch, &auth_ids_of) {
        let auth_ids = auth_ids_of(&pdu);
        let lacking: Vec<OwnedEventId> = auth_ids.iter().filter(|id| !by_id.contains_key(*id)).cloned().collect();
        if !lacking.is_empty() {
            out.missing.push((pdu, lacking));
            continue;
        }
        let mut rejected = state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| {
            by_id.get(id).cloned()
        })
        .err();
        // As `prepare`: a redaction of an event of another room redacts nothing here.
        if let (None, Some(target)) = (&rejected, &pdu.redacts) {
            if let Some(stored) = events::get(conn, target.as_str()).await? {
                if stored.room_id != pdu.room_id.as_str() {
                    rejected = Some(format!("redacts {target} of another room"));
                }
            }
        }
        let mut pdu = pdu;
        pdu.rejected = rejected.is_some();
        let pdu = Arc::new(pdu);
        by_id.insert(pdu.event_id.clone(), pdu.clone());
        checked.push((pdu, rejected));
    }
    drop(by_id);
    out.checked = checked
        .into_iter()
        .map(|(pdu, rejected)| {
            let pdu = Arc::try_unwrap(pdu).unwrap_or_else(|shared| (*shared).clone());
            Checked {
                prev: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
                auth: pdu.auth_events.iter().map(|e| e.to_string()).collect(),
                pdu,
                rejected,
                before: None,
                was_outlier: false,
                local: false,
            }
        })
        .collect();
    Ok(out)
}

/// Checks format, signatures and hashes of every event, spread over the machine's cores (the
/// ed25519 checks are most of a big batch's time). A hash mismatch answers the event redacted.
async fn verify_all(
    rules: &Arc<RoomVersionRules>,
    pdus: Vec<Pdu>,
    keys: KeysFor,
) -> Result<Vec<(OwnedEventId, Result<Pdu>)>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_worker = pdus.len().div_ceil(workers).max(64);
    let mut chunks: Vec<Vec<Pdu>> = Vec::new();
    let mut rest = pdus.into_iter();
    loop {
        let chunk: Vec<Pdu> = rest.by_ref().take(per_worker).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let rules = rules.clone();
            let keys = keys.clone();
            tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|pdu| {
                        let id = pdu.event_id.clone();
                        let result = state_res::check_pdu_format(&pdu.json, &rules.event_format)
                            .map_err(Error::BadJson)
                            .and_then(|()| {
                                let keys = keys(&pdu);
                                verify(&keys, &rules, pdu)
                            });
                        (id, result)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.extend(task.await.map_err(Error::internal)?);
    }
    Ok(out)
}

/// The events in an order where each comes after its auth events of the batch (Kahn's
/// algorithm over the auth edges, shallowest first). An event on a cycle of auth edges, which
/// only forged references could make, never becomes ready and is left at the end, where its
/// auth events are found missing.
fn auth_order(
    pdus: Vec<Pdu>,
    in_batch: &HashSet<OwnedEventId>,
    auth_ids_of: &impl Fn(&Pdu) -> Vec<OwnedEventId>,
) -> Vec<Pdu> {
    let index: HashMap<&OwnedEventId, usize> = pdus.iter().enumerate().map(|(i, p)| (&p.event_id, i)).collect();
    let mut waiting_on = vec![0usize; pdus.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); pdus.len()];
    for (i, pdu) in pdus.iter().enumerate() {
        let auth: HashSet<OwnedEventId> = auth_ids_of(pdu)
            .into_iter()
            .filter(|id| in_batch.contains(id))
            .collect();
        for id in auth {
            if let Some(&j) = index.get(&id) {
                waiting_on[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    drop(index);
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>> = waiting_on
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == 0)
        .map(|(i, _)| std::cmp::Reverse((pdus[i].depth, i)))
        .collect();
    let mut order = Vec::with_capacity(pdus.len());
    let mut placed = vec![false; pdus.len()];
    while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for &d in &dependents[i] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.push(std::cmp::Reverse((pdus[d].depth, d)));
            }
        }
    }
    order.extend((0..pdus.len()).filter(|i| !placed[*i]));
    let mut slots: Vec<Option<Pdu>> = pdus.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Stores checked events of unknown state as outliers, in one write batch inside the caller's
/// transaction: each one's row and auth references, as `store_outlier` writes them. An event
/// another writer stored meanwhile is left as it is.
pub async fn store_outliers(core: &Core, conn: &mut AnyConnection, checked: &[Checked]) -> Result<()> {
    let texts = checked
        .iter()
        .map(|c| RowText::of(&c.pdu))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<events::NewEventRow<'_>> = checked
        .iter()
        .zip(&texts)
        .map(|(c, text)| events::NewEventRow {
            outlier: true,
            rejected_reason: c.rejected.as_deref(),
            ..text.row(&c.pdu)
        })
        .collect();
    let mut batch = core.db.batch();
    for ((row, text), c) in rows.iter().zip(&texts).zip(checked) {
        events::insert_if_absent(&mut batch, row, Slot::None);
        events::insert_edges(&mut batch, &text.event_id, &[], &c.auth);
    }
    batch.run(conn).await?;
    Ok(())
}
