//! Typing notifications: kept in memory with an expiry, as they are worthless after a restart.
//! Processes sharing a PostgreSQL database apply each other's changes (`notifier::relay`), so
//! each holds every user's typing; serials are each process's own.
//! Each room's list carries the serial of its last change, which sync tokens compare against.
//! Serials come from one counter that starts at the process's start time in milliseconds and
//! takes the clock's value when that is higher, so they keep rising across restarts; a token's
//! typing part is the counter, which stays still while nobody types (an unchanged token is how
//! a long-poll knows it has nothing to report).

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

struct Rooms {
    rooms: HashMap<String, RoomTyping>,
    /// The last serial given to any room.
    serial: i64,
}

impl Rooms {
    fn next_serial(&mut self) -> i64 {
        self.serial = now_ms().max(self.serial + 1);
        self.serial
    }
}

pub struct Typing {
    rooms: Mutex<Rooms>,
}

impl Default for Typing {
    fn default() -> Self {
        Typing {
            rooms: Mutex::new(Rooms {
                rooms: HashMap::new(),
                serial: now_ms(),
            }),
        }
    }
}

/// Typing timeouts are capped so a client cannot pin itself as typing forever.
const MAX_TIMEOUT_MS: i64 = 120_000;

impl Typing {
    /// Starts (`Some(timeout)`) or stops typing through this process: applies it, wakes the
    /// room's syncs and has the other processes apply it too.
    pub fn set(self: &Arc<Self>, notifier: &Arc<Notifier>, room_id: &str, user_id: &str, timeout_ms: Option<i64>) {
        self.apply(notifier, room_id, user_id, timeout_ms);
        notifier.typing_changed(room_id, user_id, timeout_ms);
    }

    /// Applies a typing change made here or relayed from another process (the caller wakes the
    /// room's syncs). Each process expires its own entries and wakes its own syncs then.
    pub(crate) fn apply(
        self: &Arc<Self>,
        notifier: &Arc<Notifier>,
        room_id: &str,
        user_id: &str,
        timeout_ms: Option<i64>,
    ) {
        let now = now_ms();
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let serial = rooms.next_serial();
            let room = rooms.rooms.entry(room_id.to_owned()).or_default();
            match timeout_ms {
                Some(t) => {
                    room.users.insert(user_id.to_owned(), now + t.clamp(0, MAX_TIMEOUT_MS));
                }
                None => {
                    room.users.remove(user_id);
                }
            }
            room.serial = serial;
        }
        if let Some(t) = timeout_ms {
            // Expire the entry when its time is up and tell the room's syncs.
            let (this, notifier, room_id) = (self.clone(), notifier.clone(), room_id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(t.clamp(0, MAX_TIMEOUT_MS) as u64 + 5)).await;
                if this.expire(&room_id) {
                    notifier.wake([room_id.as_str()], []);
                }
            });
        }
    }

    fn expire(&self, room_id: &str) -> bool {
        let now = now_ms();
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.rooms.get_mut(room_id) else {
            return false;
        };
        let before = room.users.len();
        room.users.retain(|_, expiry| *expiry > now);
        if room.users.len() == before {
            return false;
        }
        let serial = rooms.next_serial();
        if let Some(room) = rooms.rooms.get_mut(room_id) {
            room.serial = serial;
        }
        true
    }

    /// The users typing in a room, if the list changed after `since` (a serial).
    pub fn changed_since(&self, room_id: &str, since: i64) -> Option<Vec<String>> {
        self.expire(room_id);
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.rooms.get(room_id)?;
        (room.serial > since).then(|| {
            let mut users: Vec<String> = room.users.keys().cloned().collect();
            users.sort();
            users
        })
    }

    /// The current serial: every change so far has this one or a lower one.
    pub fn serial(&self) -> i64 {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).serial
    }
}
