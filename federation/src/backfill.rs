//! Older history of a room for local users (`rooms::history` decides when it is missing):
//! `/backfill` asked of the room's other servers in turn until one answers with events this
//! server did not have, each stored oldest first through the receiver as backfilled history
//! (below every live position, so sync never takes it for new).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use ruma::{api::federation::backfill::get_backfill, OwnedEventId, OwnedRoomId, OwnedServerName, UInt};
use weft_core::{
    rooms::history::HistorySource,
    storage::{events, rooms},
};

use crate::{
    receive::{parse_pdu, Receiver, RoomVersion},
    Federation,
};

/// How long one server gets to answer a `/backfill`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one fetch of history may take in all (servers tried, events stored), since a
/// client's `/messages` waits for it.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(45);
/// Servers asked before giving up.
const MAX_SERVERS: usize = 5;

impl HistorySource for Federation {
    fn backfill<'a>(
        &'a self,
        room_id: &'a str,
        before: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'a, weft_core::Result<usize>> {
        Box::pin(async move {
            match tokio::time::timeout(TOTAL_TIMEOUT, backfill(self, room_id, before, limit)).await {
                Ok(result) => result.map_err(weft_core::Error::internal),
                Err(_) => Err(weft_core::Error::internal("backfill timed out")),
            }
        })
    }
}

/// Installs federation as the source of the core's missing history.
pub fn install(fed: &Arc<Federation>) {
    let weak = Arc::downgrade(fed);
    fed.client.core().history.install(weak);
}

/// Asks the room's servers, one after the other, for up to `limit` events before `before`,
/// and stores what the first that has any answers. Answers how many events were stored.
pub async fn backfill(fed: &Federation, room_id: &str, before: Vec<String>, limit: usize) -> Result<usize, String> {
    let core = fed.client.core();
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| e.to_string())?;
    let room = RoomVersion::of_known(fed, &room_id)
        .await?
        .ok_or_else(|| format!("{room_id} is not known here"))?;
    let before: Vec<OwnedEventId> = before
        .iter()
        .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
        .collect();
    let servers = {
        let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
        rooms::servers_in_room(&mut conn, room_id.as_str())
            .await
            .map_err(|e| e.to_string())?
    };
    let servers = servers
        .iter()
        .filter(|s| s.as_str() != core.server_name.as_str())
        .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok());
    let limit = UInt::try_from(limit as u64).unwrap_or(UInt::MAX);
    for server in servers.take(MAX_SERVERS) {
        let request = get_backfill::v1::Request::new(room_id.clone(), before.clone(), limit);
        let answer = match fed.client.send_with_timeout(&server, request, REQUEST_TIMEOUT).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "backfill from this server failed; trying another");
                continue;
            }
        };
        let stored = store(fed, &server, &room, &answer.pdus).await?;
        tracing::info!(%room_id, %server, received = answer.pdus.len(), stored, "backfilled");
        if stored > 0 {
            return Ok(stored);
        }
    }
    Ok(0)
}

/// Stores a `/backfill` answer oldest first, skipping what is already in the graph; answers
/// how many events joined the room's timeline.
async fn store(
    fed: &Federation,
    from: &OwnedServerName,
    room: &RoomVersion,
    raw: &[Box<serde_json::value::RawValue>],
) -> Result<usize, String> {
    let core = fed.client.core();
    let mut pdus: Vec<_> = raw.iter().filter_map(|r| parse_pdu(r, room).ok()).collect();
    pdus.sort_by_key(|p| p.depth);
    let receiver = Receiver {
        fed,
        from,
        room: room.clone(),
    };
    let mut stored = 0;
    for pdu in pdus {
        let known = {
            let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
            events::get(&mut conn, pdu.event_id.as_str())
                .await
                .map_err(|e| e.to_string())?
        };
        if known.is_some_and(|row| !row.outlier) {
            continue;
        }
        let id = pdu.event_id.clone();
        match receiver.backfill(pdu).await {
            Ok(outcome) if outcome.stream_pos.is_some() => stored += 1,
            Ok(_) => {}
            // One bad event does not lose the rest; whatever builds on it bridges the gap
            // with the state before it.
            Err(e) => tracing::info!(event_id = %id, %from, error = %e, "a backfilled event was not stored"),
        }
    }
    Ok(stored)
}
