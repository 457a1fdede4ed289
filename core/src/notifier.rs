//! Wakes waiting `/sync` requests when something they care about changes, without touching the
//! database: each change bumps an in-memory counter for its room or user and ticks one watch
//! channel; a waiter compares only the counters of its own rooms and user. Waking 1 000
//! long-polls for one message costs 1 000 map lookups, not 1 000 queries.
//!
//! Processes sharing one PostgreSQL relay their changes to each other through LISTEN/NOTIFY
//! (see `relay`), which feeds the same counters.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use tokio::sync::watch;

#[derive(Default)]
struct Counters {
    rooms: HashMap<String, u64>,
    users: HashMap<String, u64>,
}

pub struct Notifier {
    tick: watch::Sender<u64>,
    counters: RwLock<Counters>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

/// What a waiter watches, with the counter values it last saw.
#[derive(Clone, Debug, Default)]
pub struct Interest {
    pub user_id: String,
    pub rooms: Vec<String>,
    seen: Vec<u64>,
    seen_user: u64,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            tick: watch::channel(0).0,
            counters: RwLock::new(Counters::default()),
        }
    }

    fn bump(&self, f: impl FnOnce(&mut Counters)) {
        {
            let mut c = self.counters.write().unwrap_or_else(|e| e.into_inner());
            f(&mut c);
        }
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    /// Something happened in a room (event, typing, receipt).
    pub fn room_changed(&self, room_id: &str) {
        self.bump(|c| *c.rooms.entry(room_id.to_owned()).or_default() += 1);
    }

    /// Something happened for one user (account data, to-device, an invite, a membership).
    pub fn user_changed(&self, user_id: &str) {
        self.bump(|c| *c.users.entry(user_id.to_owned()).or_default() += 1);
    }

    /// Every change ticks this receiver; for background workers (the pusher) that re-check
    /// the database whenever anything moved instead of polling in a loop.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    pub fn interest(&self, user_id: &str, rooms: Vec<String>) -> Interest {
        let c = self.counters.read().unwrap_or_else(|e| e.into_inner());
        let seen = rooms.iter().map(|r| c.rooms.get(r).copied().unwrap_or(0)).collect();
        let seen_user = c.users.get(user_id).copied().unwrap_or(0);
        Interest {
            user_id: user_id.to_owned(),
            rooms,
            seen,
            seen_user,
        }
    }

    fn changed(&self, interest: &Interest) -> bool {
        let c = self.counters.read().unwrap_or_else(|e| e.into_inner());
        c.users.get(&interest.user_id).copied().unwrap_or(0) != interest.seen_user
            || interest
                .rooms
                .iter()
                .zip(&interest.seen)
                .any(|(r, s)| c.rooms.get(r).copied().unwrap_or(0) != *s)
    }

    /// Waits until something in `interest` changes or `timeout` passes; true if it changed.
    /// The interest then records the new counters, so waiting again waits for the next change.
    pub async fn wait(&self, interest: &mut Interest, timeout: Duration) -> bool {
        let changed = self.wait_inner(interest, timeout).await;
        if changed {
            let c = self.counters.read().unwrap_or_else(|e| e.into_inner());
            interest.seen = interest
                .rooms
                .iter()
                .map(|r| c.rooms.get(r).copied().unwrap_or(0))
                .collect();
            interest.seen_user = c.users.get(&interest.user_id).copied().unwrap_or(0);
        }
        changed
    }

    async fn wait_inner(&self, interest: &Interest, timeout: Duration) -> bool {
        let mut rx = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.changed(interest) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.changed(interest),
            }
        }
    }
}
