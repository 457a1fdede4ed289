//! Inbound transactions (`/send/{txnId}`): answered once per (origin, txnId); PDUs grouped by
//! room, each room's in order and one batch at a time, rooms side by side, so a room slow to
//! fill a gap never holds up the others; a bad PDU gets its error and the rest go on. A room
//! whose server ACL denies the origin has all its PDUs refused (`acl`).
//!
//! Its EDUs are applied by `edu.rs` once the PDUs are in; a transaction answered before is
//! applied no more, EDUs included.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
};

use ruma::{api::federation::transactions::edu::Edu, serde::Raw, OwnedEventId, OwnedRoomId, ServerName};
use serde_json::value::RawValue;
use weft_core::storage::inbound_transactions;

use crate::{
    receive::{parse_pdu, room_id_of, Receiver, RoomVersion},
    Federation,
};

/// Most PDUs and EDUs in one transaction, per the spec.
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;

/// One lock per room with PDUs being received in this process: a room's PDUs are received one
/// at a time, in the order they arrived.
#[derive(Default)]
pub struct RoomQueues(Mutex<HashMap<OwnedRoomId, Weak<tokio::sync::Mutex<()>>>>);

impl RoomQueues {
    fn lock_for(&self, room_id: &OwnedRoomId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(room_id).and_then(Weak::upgrade) {
            return lock;
        }
        map.retain(|_, weak| weak.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(room_id.clone(), Arc::downgrade(&lock));
        lock
    }
}

pub type PduResults = BTreeMap<OwnedEventId, Result<(), String>>;

/// Processes a transaction's PDUs and EDUs, or answers as before when it was processed
/// already.
pub async fn process(
    fed: &Federation,
    origin: &ServerName,
    txn_id: &str,
    pdus: &[Box<RawValue>],
    edus: &[Raw<Edu>],
) -> Result<PduResults, weft_core::Error> {
    let db = &fed.client.core().db;
    if let Some(answer) = inbound_transactions::answer(db, origin.as_str(), txn_id).await? {
        let results: BTreeMap<OwnedEventId, Option<String>> = serde_json::from_str(&answer).unwrap_or_default();
        return Ok(results
            .into_iter()
            .map(|(id, error)| (id, error.map_or(Ok(()), Err)))
            .collect());
    }
    // Group by room, keeping each room's order.
    let mut by_room: Vec<(Option<OwnedRoomId>, Vec<&RawValue>)> = Vec::new();
    for raw in pdus {
        let room = room_id_of(raw);
        match by_room.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(raw),
            None => by_room.push((room, vec![raw])),
        }
    }
    let rooms = by_room
        .into_iter()
        .map(|(room, list)| receive_room(fed, origin, room, list));
    let results: PduResults = futures::future::join_all(rooms).await.into_iter().flatten().collect();
    crate::edu::process(fed, origin, edus).await;
    let answer: BTreeMap<&OwnedEventId, Option<&String>> =
        results.iter().map(|(id, r)| (id, r.as_ref().err())).collect();
    let answer = serde_json::to_string(&answer).map_err(weft_core::Error::internal)?;
    inbound_transactions::record(db, origin.as_str(), txn_id, &answer).await?;
    Ok(results)
}

/// Receives one room's PDUs of a transaction, in order.
async fn receive_room(
    fed: &Federation,
    origin: &ServerName,
    room_id: Option<OwnedRoomId>,
    pdus: Vec<&RawValue>,
) -> Vec<(OwnedEventId, Result<(), String>)> {
    let Some(room_id) = room_id else {
        tracing::info!(%origin, count = pdus.len(), "dropped PDUs without a valid room_id");
        return Vec::new();
    };
    let room = match RoomVersion::of_known(fed, &room_id).await {
        Ok(Some(room)) => room,
        Ok(None) => {
            tracing::info!(%origin, %room_id, "dropped PDUs of a room this server is not in");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(%origin, %room_id, error = %e, "cannot read the room's version");
            return Vec::new();
        }
    };
    // The spec checks the ACL against the transaction's origin, whoever sent each PDU.
    match crate::acl::allowed(fed.client.core(), room_id.as_str(), origin).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(%origin, %room_id, count = pdus.len(), "refused PDUs: the room's server ACL denies the transaction's origin");
            let error = format!("the room's server ACL denies {origin}");
            return pdus
                .into_iter()
                .filter_map(|raw| parse_pdu(raw, &room).ok())
                .map(|pdu| (pdu.event_id, Err(error.clone())))
                .collect();
        }
        Err(e) => {
            tracing::warn!(%origin, %room_id, error = %e, "cannot read the room's server ACL");
            return Vec::new();
        }
    }
    let lock = fed.room_queues.lock_for(&room_id);
    let _turn = lock.lock().await;
    let receiver = Receiver {
        fed,
        from: origin,
        room: room.clone(),
    };
    let mut results = Vec::new();
    for raw in pdus {
        let pdu = match parse_pdu(raw, &room) {
            Ok(pdu) => pdu,
            Err(e) => {
                tracing::info!(%origin, %room_id, error = %e, "refused a malformed PDU");
                continue;
            }
        };
        let event_id = pdu.event_id.clone();
        let result = match receiver.receive(pdu).await {
            // A rejected event was still handled: it is stored as rejected, and the sender's
            // retrying it would change nothing, so it is not reported as an error.
            Ok(outcome) => {
                if let Some(reason) = outcome.rejected {
                    tracing::info!(%origin, %room_id, %event_id, %reason, "a received PDU was rejected");
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::info!(%origin, %room_id, %event_id, error = %e, "a received PDU was not accepted");
        }
        results.push((event_id, result));
    }
    results
}
