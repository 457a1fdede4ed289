//! Lazy-loaded members already sent to a device, so that an incremental sync leaves out the
//! membership events the client holds (the spec's default, `include_redundant_members:
//! false`).
//!
//! What a device was sent is remembered per `next_batch` token in a process-local memo and
//! used only by a sync whose `since` is that very token: a client that repeats an older sync
//! (its answer was lost), or whose sync lands on another process, or whose entry the memo
//! forgot, is sent the members again, which is always correct.

use std::{collections::HashMap, sync::Arc};

use ruma::api::client::filter::LazyLoadOptions;

use super::{SyncRequest, SyncToken};
use crate::Core;

/// Per room, the member events (user -> event ID) a device holds.
pub type SentMap = HashMap<String, HashMap<String, String>>;

/// The members sent to the requesting device, for a sync that leaves out redundant ones.
pub(super) struct SentMembers {
    rooms: SentMap,
}

impl SentMembers {
    /// `None` unless the filter lazy-loads members without redundant ones. An initial or
    /// full-state sync starts afresh.
    pub fn for_request(core: &Core, req: &SyncRequest) -> Option<SentMembers> {
        let LazyLoadOptions::Enabled {
            include_redundant_members: false,
        } = req.filter.room.state.lazy_load_options
        else {
            return None;
        };
        let rooms = match req.since {
            Some(since) if !req.full_state => core
                .memos
                .lazy_members
                .get(&(req.user_id.clone(), req.device_id.clone(), since))
                .map(|sent| (*sent).clone())
                .unwrap_or_default(),
            _ => SentMap::new(),
        };
        Some(SentMembers { rooms })
    }

    /// Whether the device holds this member event of the room.
    pub fn holds(&self, room_id: &str, user_id: &str, event_id: &str) -> bool {
        self.rooms
            .get(room_id)
            .and_then(|members| members.get(user_id))
            .is_some_and(|held| held == event_id)
    }

    /// The room's state is sent in full: what was sent before no longer counts.
    pub fn forget_room(&mut self, room_id: &str) {
        self.rooms.remove(room_id);
    }

    pub fn record(&mut self, room_id: &str, user_id: &str, event_id: &str) {
        self.rooms
            .entry(room_id.to_owned())
            .or_default()
            .insert(user_id.to_owned(), event_id.to_owned());
    }

    /// Remembers what the device holds once it has the answer up to `now`.
    pub fn store(self, core: &Core, req: &SyncRequest, now: SyncToken) {
        core.memos
            .lazy_members
            .set((req.user_id.clone(), req.device_id.clone(), now), Arc::new(self.rooms));
    }
}
