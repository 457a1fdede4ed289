//! Storing events received from another server: each PDU goes through core's pipeline
//! (`rooms::writer::receive`), and what its checks find missing is fetched here, with no lock
//! held, from the server that sent it: the keys that signed it, its auth chain (as outliers),
//! its missing prev events (`/get_missing_events`), or, when the gap is too wide, the state at
//! its prev events (`/state_ids`, with `/event` for what is unknown), resolved into the state
//! before it.

use std::{collections::HashSet, sync::Arc};

use futures::future::BoxFuture;
use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events, get_room_state_ids},
    },
    canonical_json::CanonicalJsonObject,
    room_version_rules::RoomVersionRules,
    OwnedEventId, OwnedRoomId, ServerName,
};
use serde_json::value::RawValue;
use weft_core::{
    events::{
        pipeline::{KeysFor, Outcome, StateAt},
        rules_for, Pdu, StateMap,
    },
    rooms::writer::{self, Received},
    storage::{events, rooms},
};

use crate::Federation;

/// The largest PDU the spec allows, in bytes of its JSON.
pub const MAX_PDU_SIZE: usize = 65_536;
/// Events asked for at once when filling a gap; a wider gap is bridged with the state instead.
/// Not the spec's default of 10, which ruma leaves out of the request, and some servers insist
/// on seeing a limit.
const MISSING_EVENTS_LIMIT: u32 = 20;
/// Rounds of fetching an outlier batch's missing auth events before giving up on the rest.
const AUTH_ROUNDS: usize = 3;

/// A room as received events need it: its version and rules.
#[derive(Clone)]
pub struct RoomVersion {
    pub room_id: OwnedRoomId,
    pub version: String,
    pub rules: Arc<RoomVersionRules>,
}

impl RoomVersion {
    pub fn new(room_id: OwnedRoomId, version: &str) -> Result<RoomVersion, String> {
        let rules = rules_for(version).map_err(|e| e.to_string())?;
        Ok(RoomVersion {
            room_id,
            version: version.to_owned(),
            rules: Arc::new(rules),
        })
    }

    /// The version of a room this server knows.
    pub async fn of_known(fed: &Federation, room_id: &OwnedRoomId) -> Result<Option<RoomVersion>, String> {
        let core = fed.client.core();
        let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
        match rooms::version(&core.db, &mut conn, room_id.as_str())
            .await
            .map_err(|e| e.to_string())?
        {
            Some(version) => RoomVersion::new(room_id.clone(), &version).map(Some),
            None => Ok(None),
        }
    }
}

/// Parses a PDU of `room`: size, JSON, event ID per the room version, the fields the pipeline
/// needs, and that it belongs to this room.
pub fn parse_pdu(raw: &RawValue, room: &RoomVersion) -> Result<Pdu, String> {
    let json: CanonicalJsonObject = serde_json::from_str(raw.get()).map_err(|e| format!("malformed PDU: {e}"))?;
    // The limit is on the canonical form: a text longer only by its whitespace is measured
    // again.
    if raw.get().len() > MAX_PDU_SIZE && serde_json::to_string(&json).map_or(true, |c| c.len() > MAX_PDU_SIZE) {
        return Err(format!("the PDU is larger than {MAX_PDU_SIZE} bytes"));
    }
    let event_id = Pdu::compute_event_id(&json, &room.rules).map_err(|e| e.to_string())?;
    let pdu = Pdu::from_json(event_id, json, &room.rules).map_err(|e| e.to_string())?;
    if pdu.room_id != room.room_id {
        return Err(format!("the PDU is of {}, not {}", pdu.room_id, room.room_id));
    }
    Ok(pdu)
}

/// Parses many PDUs of `room` (a room's state or auth chain), spread over the machine's cores,
/// each raw value dropped once parsed; those that do not parse are left out.
pub async fn parse_pdus(raws: Vec<Box<RawValue>>, room: &RoomVersion) -> Vec<Pdu> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_worker = raws.len().div_ceil(workers).max(64);
    let mut rest = raws.into_iter();
    let mut tasks = Vec::new();
    loop {
        let chunk: Vec<Box<RawValue>> = rest.by_ref().take(per_worker).collect();
        if chunk.is_empty() {
            break;
        }
        let room = room.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .filter_map(|raw| parse_pdu(&raw, &room).ok())
                .collect::<Vec<_>>()
        }));
    }
    let mut pdus = Vec::new();
    for task in tasks {
        match task.await {
            Ok(parsed) => pdus.extend(parsed),
            Err(e) => tracing::warn!(error = %e, "parsing PDUs failed"),
        }
    }
    pdus
}

/// The room ID a PDU names, before anything else is known about it.
pub fn room_id_of(raw: &RawValue) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: OwnedRoomId,
    }
    serde_json::from_str::<RoomOnly>(raw.get()).ok().map(|r| r.room_id)
}

/// Receives PDUs of one room, fetching what they need from `from`.
pub struct Receiver<'a> {
    pub fed: &'a Federation,
    pub from: &'a ServerName,
    pub room: RoomVersion,
}

impl Receiver<'_> {
    /// Stores a PDU into the room's graph (or rejects or soft-fails it), fetching missing
    /// auth events, prev events or the state before it as needed.
    pub async fn receive(&self, pdu: Pdu) -> Result<Outcome, String> {
        self.receive_with(pdu, StateAt::PrevEvents, true, false).await
    }

    /// Stores an event of the room's older history (`/backfill`'s answer, received oldest
    /// first) below every live position: its prev events are older still, so when they are
    /// not stored the state before it is asked for at once rather than the gap filled.
    pub async fn backfill(&self, pdu: Pdu) -> Result<Outcome, String> {
        self.receive_with(pdu, StateAt::PrevEvents, false, true).await
    }

    fn receive_with(
        &self,
        pdu: Pdu,
        mut state_at: StateAt,
        fill_gaps: bool,
        backfilled: bool,
    ) -> BoxFuture<'_, Result<Outcome, String>> {
        Box::pin(async move {
            let core = self.fed.client.core();
            let pushed = fill_gaps;
            let mut fill_gaps = fill_gaps;
            // Each round fetches one kind of missing piece; four cover auth events, state
            // events, a gap, and the state across a gap.
            for _ in 0..5 {
                let keys = self.fed.keys.keys_for_pdu(&pdu.json, &self.room.rules).await;
                let version = &self.room.version;
                let received = if backfilled {
                    writer::backfill(core, version, pdu.clone(), &keys, state_at.clone()).await
                } else {
                    writer::receive(core, version, pdu.clone(), &keys, state_at.clone()).await
                }
                .map_err(|e| e.to_string())?;
                let missing = match received {
                    Received::Stored(outcome) => return Ok(outcome),
                    Received::Missing(missing) => missing,
                };
                if !missing.auth_events.is_empty() {
                    // The whole chain in one request; a server that does not serve
                    // `/event_auth` is asked for the missing events one by one.
                    if let Err(e) = self.fetch_auth_chain(&pdu.event_id).await {
                        tracing::info!(from = %self.from, error = %e, "event_auth failed; fetching the missing auth events one by one");
                        self.fetch_outliers(&missing.auth_events).await?;
                    }
                }
                if !missing.state_events.is_empty() {
                    self.fetch_outliers(&missing.state_events).await?;
                }
                if !missing.prev_events.is_empty() && matches!(state_at, StateAt::PrevEvents) {
                    if fill_gaps {
                        fill_gaps = false;
                        let answered = self.fetch_missing_prevs(&pdu).await?;
                        // A pushed event whose gap its sender answered but would not fill is
                        // dropped, not given state from elsewhere: the sender is the one that
                        // should know its prev events, and its next event tries again. When the
                        // sender could not be asked (unreachable, an error), and for events
                        // pulled into a gap, the state across the gap bridges it (below).
                        if pushed && answered && !self.prevs_known(&pdu).await? {
                            return Err(format!(
                                "{} did not divulge the prev events of {}",
                                self.from, pdu.event_id
                            ));
                        }
                    } else {
                        state_at = StateAt::Supplied(Arc::new(self.state_before(&pdu).await?));
                    }
                }
            }
            Err(format!(
                "{}: its auth events or state could not be completed",
                pdu.event_id
            ))
        })
    }

    /// Stores events as outliers, each once its own auth events are stored, fetching those
    /// that are missing from `from`. The events are checked and written in batches
    /// (`writer::store_outliers_batch`): each signing server's keys fetched once, signatures
    /// verified on every core, a write transaction per few hundred events.
    pub async fn store_outliers(&self, pdus: Vec<Pdu>) -> Result<(), String> {
        let core = self.fed.client.core();
        let mut pending = pdus;
        for round in 0..=AUTH_ROUNDS {
            let keys = Arc::new(
                self.fed
                    .keys
                    .keys_for_pdus(pending.iter().map(|p| &p.json), &self.room.rules)
                    .await,
            );
            let rules = self.room.rules.clone();
            let keys_for: KeysFor = Arc::new(move |pdu: &Pdu| keys.for_pdu(&pdu.json, &rules));
            let outcome = writer::store_outliers_batch(core, &self.room.version, pending, keys_for)
                .await
                .map_err(|e| e.to_string())?;
            // A bad event of a batch (a forged signature, say) is left out; whatever needs it
            // is then missing its auth events and refused in turn.
            for (event_id, error) in &outcome.refused {
                tracing::info!(%event_id, from = %self.from, %error, "refused an event");
            }
            if outcome.missing.is_empty() {
                return Ok(());
            }
            let progress = outcome.stored > 0;
            let waiting: HashSet<OwnedEventId> = outcome.missing.iter().map(|(p, _)| p.event_id.clone()).collect();
            let fetch: Vec<OwnedEventId> = outcome
                .missing
                .iter()
                .flat_map(|(_, lacking)| lacking.iter())
                .filter(|id| !waiting.contains(*id))
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            pending = outcome.missing.into_iter().map(|(pdu, _)| pdu).collect();
            if fetch.is_empty() && !progress {
                break;
            }
            if round < AUTH_ROUNDS {
                for id in fetch {
                    pending.push(self.fetch_event(&id).await?);
                }
            }
        }
        Err(format!(
            "{} events could not have their auth events completed",
            pending.len()
        ))
    }

    /// Fetches an event from `from`, checking that it is the one asked for.
    async fn fetch_event(&self, event_id: &OwnedEventId) -> Result<Pdu, String> {
        let response = self
            .fed
            .client
            .send(self.from, get_event::v1::Request::new(event_id.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let pdu = parse_pdu(&response.pdu, &self.room)?;
        if &pdu.event_id != event_id {
            return Err(format!("{} answered another event for {event_id}", self.from));
        }
        Ok(pdu)
    }

    /// Whether every prev event of `pdu` is stored (as an event of the graph, not an outlier).
    async fn prevs_known(&self, pdu: &Pdu) -> Result<bool, String> {
        let ids: Vec<String> = pdu.prev_events.iter().map(|id| id.to_string()).collect();
        let mut conn = self.fed.client.core().db.conn().await.map_err(|e| e.to_string())?;
        let known = events::known_in_graph(&mut conn, &ids)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ids.iter().all(|id| known.contains(id.as_str())))
    }

    /// Fetches events by ID and stores them as outliers (with their auth chains).
    async fn fetch_outliers(&self, ids: &[OwnedEventId]) -> Result<(), String> {
        let mut pdus = Vec::new();
        for id in ids {
            pdus.push(self.fetch_event(id).await?);
        }
        self.store_outliers(pdus).await
    }

    /// Fetches an event's auth chain and stores it as outliers.
    async fn fetch_auth_chain(&self, event_id: &OwnedEventId) -> Result<(), String> {
        let response = self
            .fed
            .client
            .send(
                self.from,
                get_event_authorization::v1::Request::new(self.room.room_id.clone(), event_id.clone()),
            )
            .await
            .map_err(|e| e.to_string())?;
        let pdus = parse_pdus(response.auth_chain, &self.room).await;
        self.store_outliers(pdus).await
    }

    /// Fetches the events between the room's forward extremities and `pdu`, and receives
    /// them oldest first (each may in turn need the state across a wider gap). Whether `from`
    /// answered.
    async fn fetch_missing_prevs(&self, pdu: &Pdu) -> Result<bool, String> {
        let core = self.fed.client.core();
        let earliest: Vec<OwnedEventId> = {
            let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
            rooms::head(&mut conn, self.room.room_id.as_str())
                .await
                .map_err(|e| e.to_string())?
                .extremities
                .iter()
                .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
                .collect()
        };
        let mut request =
            get_missing_events::v1::Request::new(self.room.room_id.clone(), earliest, vec![pdu.event_id.clone()]);
        request.limit = MISSING_EVENTS_LIMIT.into();
        let response = match self.fed.client.send(self.from, request).await {
            Ok(response) => response,
            // Not fatal: the state before the event bridges the gap instead.
            Err(e) => {
                tracing::info!(from = %self.from, error = %e, "get_missing_events failed");
                return Ok(false);
            }
        };
        let mut fetched: Vec<Pdu> = response
            .events
            .iter()
            .filter_map(|raw| parse_pdu(raw, &self.room).ok())
            .filter(|p| p.event_id != pdu.event_id)
            .collect();
        fetched.sort_by_key(|p| p.depth);
        for missing in fetched {
            let id = missing.event_id.clone();
            if let Err(e) = self.receive_with(missing, StateAt::PrevEvents, false, false).await {
                tracing::info!(event_id = %id, error = %e, "a missing event could not be stored");
            }
        }
        Ok(true)
    }

    /// The state before `pdu`: the state after each of its prev events, asked of `from`
    /// (`/state_ids` answers the state before an event; a state event adds itself), with the
    /// events not stored here fetched as outliers, resolved together.
    async fn state_before(&self, pdu: &Pdu) -> Result<StateMap, String> {
        let core = self.fed.client.core();
        let mut states = Vec::new();
        for prev in &pdu.prev_events {
            // A prev event stored here with its state needs no asking.
            let local = {
                let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
                match events::get(&mut conn, prev.as_str()).await.map_err(|e| e.to_string())? {
                    Some(stored) if !stored.outlier => match stored.state_after {
                        Some(group) => Some(
                            weft_core::storage::state::load(&core.db, &mut conn, group)
                                .await
                                .map_err(|e| e.to_string())?,
                        ),
                        None => None,
                    },
                    _ => None,
                }
            };
            if let Some(state) = local {
                states.push(state);
                continue;
            }
            let response = self
                .fed
                .client
                .send(
                    self.from,
                    get_room_state_ids::v1::Request::new(prev.clone(), self.room.room_id.clone()),
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut ids: Vec<OwnedEventId> = response.pdu_ids.clone();
            ids.push(prev.clone());
            let as_strings: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            let known = {
                let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
                events::known(&mut conn, &as_strings).await.map_err(|e| e.to_string())?
            };
            let unknown: Vec<OwnedEventId> = ids.into_iter().filter(|id| !known.contains(id.as_str())).collect();
            self.fetch_outliers(&unknown).await?;
            let mut state = StateMap::new();
            let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
            let stored = events::get_many(
                &mut conn,
                &response.pdu_ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
            )
            .await
            .map_err(|e| e.to_string())?;
            for event in stored.iter().chain(
                events::get(&mut conn, prev.as_str())
                    .await
                    .map_err(|e| e.to_string())?
                    .iter(),
            ) {
                if let Some(key) = &event.state_key {
                    if !event.rejected {
                        state.insert((event.event_type.clone(), key.clone()), event.event_id.clone());
                    }
                }
            }
            states.push(Arc::new(state));
        }
        if states.len() == 1 {
            return Ok(states.pop().map(|s| (*s).clone()).unwrap_or_default());
        }
        let mut conn = core.db.conn().await.map_err(|e| e.to_string())?;
        weft_core::events::state::resolve(&mut conn, &self.room.rules, &states)
            .await
            .map_err(|e| e.to_string())
    }
}
