//! Process-local memos: facts this process saw recently that let it skip a read it would
//! otherwise repeat on every request. They only ever save work; what a client is shown still
//! comes from the database. Each memo is either safe however stale it is (a fact that cannot
//! become false, or one that only tunes a wake-up) or bounded by a short age, so several
//! processes sharing one database stay correct.

use std::{collections::HashMap, sync::Arc};

use quick_cache::{UnitWeighter, Weighter};

use crate::{
    presence::Presence,
    storage::events::StoredEvent,
    sync::{lazy::SentMap, SyncToken},
    util::now_ms,
};

/// Entries per memo keyed by user or device: a memo that forgets simply reads again.
const CAPACITY: usize = 20_000;
/// Windows of the events stream remembered: only syncs woken together share one.
const WINDOWS: usize = 256;
/// Events held by the timeline and relation memos together, at most (a few MiB).
const WINDOW_EVENTS: u64 = 4096;

/// Devices whose lazy-loaded members are remembered (about), and member events held for
/// them all at most (some tens of MiB).
const LAZY_DEVICES: usize = 4096;
const LAZY_MEMBERS: u64 = 200_000;

pub struct Memos {
    /// Each user's presence row as last read or written here, with when (ms): `presence::set`
    /// runs on every sync and trusts this for `PRESENCE_MAX_AGE_MS`.
    pub presence: Memo<String, (Presence, i64)>,
    /// Per (user, device), a to-device stream position up to which no message remains:
    /// messages get increasing positions, so this never becomes false.
    pub to_device_acked: Memo<(String, String), i64>,
    /// Per user, the rooms of the last sync built here, with the events position it was built
    /// at: only for what a long-poll waits on (a membership change wakes the user's own
    /// counter, and every build rereads the memberships).
    pub sync_rooms: Memo<String, (i64, Arc<Vec<String>>)>,
    /// Rooms with events between two events-stream positions (each with whether a membership
    /// event is among them), as `/sync` asks: positions up to the current one belong to
    /// committed events whose room and type never change, so an answer never goes stale.
    pub rooms_with_events: Memo<(i64, i64), Arc<HashMap<String, bool>>>,
    /// Per (room, from, to, limit): the newest timeline events of the room with positions in
    /// `(from, to]`, as an incremental `/sync` reads them; every member's sync woken by one
    /// message asks the same. A row only changes later when a redaction (at a position past
    /// `to`) marks it: an answer from here may then show the event as a read made before the
    /// redaction did, and the redaction itself comes in the next sync.
    pub timelines: Memo<(String, i64, i64, i64), Arc<Vec<StoredEvent>>, ByEvents>,
    /// Per (position, event): the event's edits and thread replies (relation type and event,
    /// newest first) as read by a sync answering up to that position. A relation that lands
    /// after the first such read is left out for the others too; it reaches them in their
    /// next sync, as an event past the position.
    pub relations: Memo<(i64, String), Arc<Vec<(String, StoredEvent)>>, ByEvents>,
    /// Per (user, device, `next_batch`): the lazy-loaded member events that device was sent
    /// in its rooms (`sync::lazy`). Only a sync from exactly that token uses an entry; a
    /// forgotten entry means the members are sent again.
    pub lazy_members: Memo<(String, String, SyncToken), Arc<SentMap>, ByMembers>,
}

/// Weighs a lazy-members entry by the member events it holds.
#[derive(Clone, Default)]
pub struct ByMembers;

impl<K> Weighter<K, Arc<SentMap>> for ByMembers {
    fn weight(&self, _key: &K, sent: &Arc<SentMap>) -> u64 {
        sent.values().map(|m| m.len() as u64).sum::<u64>() + 1
    }
}

/// Weighs a memo entry by the events it holds (an empty answer still counts one).
#[derive(Clone, Default)]
pub struct ByEvents;

impl<K, T> Weighter<K, Arc<Vec<T>>> for ByEvents {
    fn weight(&self, _key: &K, events: &Arc<Vec<T>>) -> u64 {
        events.len() as u64 + 1
    }
}

impl Default for Memos {
    fn default() -> Self {
        Memos {
            presence: Memo::default(),
            to_device_acked: Memo::default(),
            sync_rooms: Memo::default(),
            rooms_with_events: Memo(quick_cache::sync::Cache::new(WINDOWS)),
            timelines: Memo(quick_cache::sync::Cache::with_weighter(
                WINDOWS,
                WINDOW_EVENTS / 2,
                ByEvents,
            )),
            relations: Memo(quick_cache::sync::Cache::with_weighter(
                WINDOWS,
                WINDOW_EVENTS / 2,
                ByEvents,
            )),
            lazy_members: Memo(quick_cache::sync::Cache::with_weighter(
                LAZY_DEVICES,
                LAZY_MEMBERS,
                ByMembers,
            )),
        }
    }
}

/// A cache's size and lookups so far, for the metrics.
#[derive(Clone, Copy, Debug)]
pub struct CacheStats {
    pub len: usize,
    pub hits: u64,
    pub misses: u64,
}

impl Memos {
    /// Each memo's name and counts.
    pub fn stats(&self) -> [(&'static str, CacheStats); 7] {
        [
            ("memo_presence", self.presence.stats()),
            ("memo_to_device_acked", self.to_device_acked.stats()),
            ("memo_sync_rooms", self.sync_rooms.stats()),
            ("memo_rooms_with_events", self.rooms_with_events.stats()),
            ("memo_timelines", self.timelines.stats()),
            ("memo_relations", self.relations.stats()),
            ("memo_lazy_members", self.lazy_members.stats()),
        ]
    }
}

/// How long the presence memo is trusted: presence written by another process (or directly in
/// the database) is noticed within this.
pub const PRESENCE_MAX_AGE_MS: i64 = 10_000;

pub struct Memo<K, V, W = UnitWeighter>(quick_cache::sync::Cache<K, V, W>);

impl<K, V> Default for Memo<K, V>
where
    K: Eq + std::hash::Hash + Clone,
    V: Clone,
{
    fn default() -> Self {
        Memo(quick_cache::sync::Cache::new(CAPACITY))
    }
}

impl<K, V, W> Memo<K, V, W>
where
    K: Eq + std::hash::Hash + Clone,
    V: Clone,
    W: Weighter<K, V> + Clone,
{
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: std::hash::Hash + quick_cache::Equivalent<K> + ?Sized,
    {
        self.0.get(key)
    }

    pub fn set(&self, key: K, value: V) {
        self.0.insert(key, value);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            len: self.0.len(),
            hits: self.0.hits(),
            misses: self.0.misses(),
        }
    }
}

impl Memo<String, (Presence, i64)> {
    /// The user's presence if it was read or written here within `PRESENCE_MAX_AGE_MS`.
    pub fn fresh(&self, user_id: &str) -> Option<Presence> {
        let (presence, at) = self.0.get(user_id)?;
        (now_ms() - at < PRESENCE_MAX_AGE_MS).then_some(presence)
    }
}
