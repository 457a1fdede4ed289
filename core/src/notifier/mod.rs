//! Wakes waiting `/sync` requests (and the pusher) when something they care about changes,
//! without touching the database: each change bumps an in-memory counter for its room or user
//! and ticks one watch channel; a waiter compares only the counters of its own rooms and user.
//! Waking 1 000 long-polls for one message costs 1 000 map lookups, not 1 000 queries.
//!
//! The counters are this process's. On PostgreSQL, where several processes may share the
//! database, `relay` publishes every change made here with NOTIFY and bumps the counters here
//! for the changes the other processes publish. SQLite is one process and has no relay.

pub mod relay;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::Duration,
};

use tokio::sync::watch;

#[derive(Default)]
struct Counters {
    rooms: HashMap<String, u64>,
    users: HashMap<String, u64>,
    /// Bumped when changes may have been missed (the relay lost its connection): every waiter
    /// wakes and looks.
    everyone: u64,
}

impl Counters {
    fn room(&self, room_id: &str) -> u64 {
        self.rooms.get(room_id).copied().unwrap_or(0)
    }

    fn user(&self, user_id: &str) -> u64 {
        self.users.get(user_id).copied().unwrap_or(0)
    }
}

fn bump(counters: &mut HashMap<String, u64>, key: &str) {
    match counters.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counters.insert(key.to_owned(), 1);
        }
    }
}

pub struct Notifier {
    tick: watch::Sender<u64>,
    counters: RwLock<Counters>,
    /// Where changes made here go out to the other processes (PostgreSQL only).
    relay: OnceLock<Arc<relay::Outbox>>,
    /// Set when the server shuts down: waiters answer at once, as if their timeout passed.
    closing: AtomicBool,
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
    seen_everyone: u64,
}

impl Interest {
    fn record(&mut self, c: &Counters) {
        self.seen = self.rooms.iter().map(|r| c.room(r)).collect();
        self.seen_user = c.user(&self.user_id);
        self.seen_everyone = c.everyone;
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            tick: watch::channel(0).0,
            counters: RwLock::new(Counters::default()),
            relay: OnceLock::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// The server is shutting down: every waiter answers now with what it has (a long-poll
    /// its empty answer), and later waits do not wait, so in-flight requests finish quickly.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
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
        self.wake([room_id], []);
        if let Some(relay) = self.relay.get() {
            relay.room_changed(room_id);
        }
    }

    /// Something happened for one user (account data, to-device, an invite, a membership).
    pub fn user_changed(&self, user_id: &str) {
        self.wake([], [user_id]);
        if let Some(relay) = self.relay.get() {
            relay.user_changed(user_id);
        }
    }

    /// A user started (`Some(timeout)`) or stopped typing through this process: typing lives
    /// in memory, so the change itself goes to the other processes, which apply it.
    pub(crate) fn typing_changed(&self, room_id: &str, user_id: &str, timeout_ms: Option<i64>) {
        self.wake([room_id], []);
        if let Some(relay) = self.relay.get() {
            relay.typing_changed(room_id, user_id, timeout_ms);
        }
    }

    /// Wakes this process's waiters on these rooms and users, and nobody elsewhere: for changes
    /// that other processes relayed here or see for themselves (a typing entry's expiry).
    pub(crate) fn wake<'a>(&self, rooms: impl IntoIterator<Item = &'a str>, users: impl IntoIterator<Item = &'a str>) {
        crate::metrics::notifier_wakeup("change");
        self.bump(|c| {
            rooms.into_iter().for_each(|r| bump(&mut c.rooms, r));
            users.into_iter().for_each(|u| bump(&mut c.users, u));
        });
    }

    /// Wakes every waiter here: changes made elsewhere may have gone unannounced.
    pub(crate) fn wake_everyone(&self) {
        crate::metrics::notifier_wakeup("everyone");
        self.bump(|c| c.everyone += 1);
    }

    /// Every change ticks this receiver, relayed ones too; for background workers (the pusher)
    /// that re-check the database whenever anything moved instead of polling in a loop.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    pub fn interest(&self, user_id: &str, rooms: Vec<String>) -> Interest {
        let mut interest = Interest {
            user_id: user_id.to_owned(),
            rooms,
            ..Interest::default()
        };
        interest.record(&self.counters.read().unwrap_or_else(|e| e.into_inner()));
        interest
    }

    fn changed(&self, interest: &Interest) -> bool {
        let c = self.counters.read().unwrap_or_else(|e| e.into_inner());
        c.everyone != interest.seen_everyone
            || c.user(&interest.user_id) != interest.seen_user
            || interest.rooms.iter().zip(&interest.seen).any(|(r, s)| c.room(r) != *s)
    }

    /// Waits until something in `interest` changes or `timeout` passes; true if it changed.
    /// The interest then records the new counters, so waiting again waits for the next change.
    pub async fn wait(&self, interest: &mut Interest, timeout: Duration) -> bool {
        let waiting = crate::metrics::Waiting::start();
        let changed = self.wait_inner(interest, timeout).await;
        drop(waiting);
        if changed {
            crate::metrics::waiter_woken();
            interest.record(&self.counters.read().unwrap_or_else(|e| e.into_inner()));
        }
        changed
    }

    async fn wait_inner(&self, interest: &Interest, timeout: Duration) -> bool {
        let mut rx = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.closing() {
                return false;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_for_another_room_leaves_a_waiter_waiting() {
        let notifier = Notifier::new();
        let mut interest = notifier.interest("@a:x", vec!["!r:x".into()]);
        notifier.wake(["!other:x"], ["@b:x"]);
        assert!(!notifier.wait(&mut interest, Duration::ZERO).await);
        notifier.wake(["!r:x"], []);
        assert!(notifier.wait(&mut interest, Duration::ZERO).await);
        // The interest recorded what it saw: the same change does not wake it twice.
        assert!(!notifier.wait(&mut interest, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_closed_notifier_answers_waiters_at_once() {
        let notifier = Arc::new(Notifier::new());
        let mut interest = notifier.interest("@a:x", vec!["!r:x".into()]);
        let waiting = notifier.clone();
        let waiter = tokio::spawn(async move { waiting.wait(&mut interest, Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        notifier.close();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter answers at once")
            .unwrap();
        assert!(!woke, "as if its timeout passed: nothing changed");
        let mut later = notifier.interest("@a:x", vec![]);
        assert!(
            !notifier.wait(&mut later, Duration::from_secs(60)).await,
            "no new wait waits"
        );
    }

    #[tokio::test]
    async fn waking_everyone_wakes_every_waiter_and_ticks_workers() {
        let notifier = Notifier::new();
        let tick = notifier.subscribe();
        let mut interest = notifier.interest("@a:x", vec!["!r:x".into()]);
        notifier.wake_everyone();
        assert!(notifier.wait(&mut interest, Duration::ZERO).await);
        assert!(tick.has_changed().unwrap());
    }
}
