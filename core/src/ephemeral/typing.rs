//! Typing notifications: kept in memory with an expiry, as they are worthless after a restart.
//! Each room's list carries a serial (milliseconds since the epoch of its last change) that
//! sync tokens compare against, so serials keep rising across restarts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{notifier::Notifier, util::now_ms};

#[derive(Default)]
struct RoomTyping {
    /// user -> expiry (ms since epoch)
    users: HashMap<String, i64>,
    serial: i64,
}

#[derive(Default)]
pub struct Typing {
    rooms: Mutex<HashMap<String, RoomTyping>>,
}

/// Typing timeouts are capped so a client cannot pin itself as typing forever.
const MAX_TIMEOUT_MS: i64 = 120_000;

impl Typing {
    /// Starts (`Some(timeout)`) or stops typing, and wakes the room's syncs.
    pub fn set(self: &Arc<Self>, notifier: &Arc<Notifier>, room_id: &str, user_id: &str, timeout_ms: Option<i64>) {
        let now = now_ms();
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let room = rooms.entry(room_id.to_owned()).or_default();
            match timeout_ms {
                Some(t) => {
                    room.users.insert(user_id.to_owned(), now + t.clamp(0, MAX_TIMEOUT_MS));
                }
                None => {
                    room.users.remove(user_id);
                }
            }
            room.serial = now.max(room.serial + 1);
        }
        notifier.room_changed(room_id);
        if let Some(t) = timeout_ms {
            // Expire the entry when its time is up and tell the room's syncs.
            let (this, notifier, room_id) = (self.clone(), notifier.clone(), room_id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(t.clamp(0, MAX_TIMEOUT_MS) as u64 + 5)).await;
                if this.expire(&room_id) {
                    notifier.room_changed(&room_id);
                }
            });
        }
    }

    fn expire(&self, room_id: &str) -> bool {
        let now = now_ms();
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.get_mut(room_id) else {
            return false;
        };
        let before = room.users.len();
        room.users.retain(|_, expiry| *expiry > now);
        if room.users.len() != before {
            room.serial = now.max(room.serial + 1);
            true
        } else {
            false
        }
    }

    /// The users typing in a room, if the list changed after `since` (a serial).
    pub fn changed_since(&self, room_id: &str, since: i64) -> Option<Vec<String>> {
        self.expire(room_id);
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(room_id)?;
        (room.serial > since).then(|| {
            let mut users: Vec<String> = room.users.keys().cloned().collect();
            users.sort();
            users
        })
    }

    /// The current serial: the highest of all rooms, or now.
    pub fn serial(&self) -> i64 {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.values().map(|r| r.serial).max().unwrap_or(0).max(now_ms())
    }
}
