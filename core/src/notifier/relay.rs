//! Relays the notifier's changes between processes sharing one PostgreSQL database, over
//! LISTEN/NOTIFY on one channel.
//!
//! Out: the notifier hands each change made here to the `Outbox` (a set, so repeats coalesce)
//! and returns; a background task sends what accumulated with one `pg_notify` statement, while
//! the next changes accumulate. A request therefore never waits for the round trip, and a busy
//! moment costs one statement per round trip, not one per change. Changes are published after
//! their commit, so a process woken by one reads it from the database.
//!
//! In: every process LISTENs on a connection of its own and applies what the others published:
//! wake-ups bump its counters, typing changes (typing lives in memory) are applied to its
//! typing state. Each process tags its messages with a random ID and skips its own. While the
//! connection is down notifications are lost, so once it is back every waiter here wakes and
//! looks (typing changes missed meanwhile are lost; they expire anyway).

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use crate::{util::random_string, Core, Result};

/// The one channel every process publishes on and listens to.
const CHANNEL: &str = "weft_changes";
/// What the listening connection calls itself in `pg_stat_activity`.
const APPLICATION_NAME: &str = "weft-relay";
/// Payloads are kept below this, well under PostgreSQL's 8000-byte limit (an ID is at most 255
/// bytes, so one change always fits).
const PAYLOAD_BYTES: usize = 4000;
/// How long reconnecting waits after a failure, at first and at most.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// One change, as published.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Room(String),
    User(String),
    Typing {
        room_id: String,
        user_id: String,
        timeout_ms: Option<i64>,
    },
}

/// One NOTIFY payload.
#[derive(Deserialize)]
struct Message {
    from: String,
    changes: Vec<Change>,
}

/// Changes made here and not yet published.
#[derive(Default)]
pub(crate) struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    /// Rooms and users changed, each once however often.
    wakes: HashSet<Change>,
    /// The last typing change per (room, user): it replaces the earlier ones.
    typing: HashMap<(String, String), Option<i64>>,
}

impl Outbox {
    fn add(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.ready.notify_one();
    }

    pub(crate) fn room_changed(&self, room_id: &str) {
        self.add(|p| {
            p.wakes.insert(Change::Room(room_id.to_owned()));
        });
    }

    pub(crate) fn user_changed(&self, user_id: &str) {
        self.add(|p| {
            p.wakes.insert(Change::User(user_id.to_owned()));
        });
    }

    pub(crate) fn typing_changed(&self, room_id: &str, user_id: &str, timeout_ms: Option<i64>) {
        self.add(|p| {
            p.typing.insert((room_id.to_owned(), user_id.to_owned()), timeout_ms);
        });
    }

    fn take(&self) -> Vec<Change> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let typing = pending
            .typing
            .into_iter()
            .map(|((room_id, user_id), timeout_ms)| Change::Typing {
                room_id,
                user_id,
                timeout_ms,
            });
        pending.wakes.into_iter().chain(typing).collect()
    }
}

/// The payloads that carry `changes`, each below `PAYLOAD_BYTES`.
fn payloads(from: &str, changes: Vec<Change>) -> Vec<String> {
    let head = serde_json::json!({ "from": from }).to_string();
    // `{"from":"…"` and then `,"changes":[…]}`.
    let head = format!("{},\"changes\":[", head.trim_end_matches('}'));
    let mut out = Vec::new();
    let mut current = head.clone();
    for change in changes {
        let json = serde_json::to_string(&change).expect("a change serialises");
        let empty = current.len() == head.len();
        if !empty && current.len() + json.len() + 3 > PAYLOAD_BYTES {
            current.push_str("]}");
            out.push(std::mem::replace(&mut current, head.clone()));
        } else if !empty {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > head.len() {
        current.push_str("]}");
        out.push(current);
    }
    out
}

/// Starts relaying `core`'s notifier through the database at `url` until `stop` turns true.
/// Returns once this process listens, so nothing published from then on is missed.
pub async fn start(core: &Core, url: &str, stop: watch::Receiver<bool>) -> Result<JoinHandle<()>> {
    let listener = listen(url).await?;
    let outbox = Arc::new(Outbox::default());
    if core.notifier.relay.set(outbox.clone()).is_err() {
        return Err(crate::Error::Internal("the notifier already has a relay".into()));
    }
    let id = random_string(16);
    let (core, url) = (core.clone(), url.to_owned());
    Ok(tokio::spawn(async move {
        tokio::join!(
            publish(&core, &id, &outbox, stop.clone()),
            receive(&core, &id, &url, listener, stop),
        );
    }))
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Publishes what the outbox holds whenever it holds something, and once more when stopping.
async fn publish(core: &Core, id: &str, outbox: &Outbox, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = outbox.ready.notified() => false,
            _ = stopped(&mut stop) => true,
        };
        let payloads = payloads(id, outbox.take());
        if !payloads.is_empty() {
            let all = serde_json::to_string(&payloads).expect("strings serialise");
            let sent = sqlx::query("SELECT count(pg_notify($1, p)) FROM json_array_elements_text($2::json) p")
                .bind(CHANNEL)
                .bind(all)
                .execute(core.db.pool())
                .await;
            if let Err(e) = sent {
                // What was committed stays in the database: the other processes' waiters see it
                // when something else wakes them or their long-poll times out.
                tracing::warn!(error = %e, "cannot relay changes to the other processes");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Applies what the other processes publish, reconnecting when the connection is lost.
async fn receive(core: &Core, id: &str, url: &str, mut listener: PgListener, mut stop: watch::Receiver<bool>) {
    loop {
        let received = tokio::select! {
            r = listener.try_recv() => r,
            _ = stopped(&mut stop) => return,
        };
        match received {
            Ok(Some(notification)) => apply(core, id, notification.payload()),
            // The connection was lost and is back, listening again.
            Ok(None) => core.notifier.wake_everyone(),
            Err(e) => {
                tracing::warn!(error = %e, "lost the connection relaying changes between processes; reconnecting");
                let mut retry = FIRST_RETRY;
                listener = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stopped(&mut stop) => return,
                    }
                    match listen(url).await {
                        Ok(listener) => break listener,
                        Err(e) => tracing::warn!(error = %e, "cannot reconnect to relay changes between processes"),
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                };
                core.notifier.wake_everyone();
            }
        }
    }
}

/// A connection of its own that LISTENs on the channel (and, should it drop, reconnects and
/// listens again before `try_recv` reports the loss).
async fn listen(url: &str) -> Result<PgListener> {
    let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
    // A pool of one, as `PgListener::connect` makes: it is how the listener reconnects.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Applies one payload another process published.
fn apply(core: &Core, id: &str, payload: &str) {
    let message: Message = match serde_json::from_str(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable change relayed from another process");
            return;
        }
    };
    if message.from == id {
        return;
    }
    let (mut rooms, mut users) = (Vec::new(), Vec::new());
    for change in &message.changes {
        match change {
            Change::Room(room_id) => rooms.push(room_id.as_str()),
            Change::User(user_id) => users.push(user_id.as_str()),
            Change::Typing {
                room_id,
                user_id,
                timeout_ms,
            } => {
                core.typing.apply(&core.notifier, room_id, user_id, *timeout_ms);
                rooms.push(room_id.as_str());
            }
        }
    }
    core.notifier.wake(rooms, users);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &str) -> Message {
        serde_json::from_str(payload).expect("a payload is a message")
    }

    #[test]
    fn repeated_changes_are_published_once_and_the_last_typing_change_wins() {
        let outbox = Outbox::default();
        outbox.room_changed("!r:x");
        outbox.room_changed("!r:x");
        outbox.user_changed("@u:x");
        outbox.typing_changed("!r:x", "@u:x", Some(30_000));
        outbox.typing_changed("!r:x", "@u:x", None);
        let mut changes = outbox.take();
        changes.sort_by_key(|c| serde_json::to_string(c).unwrap());
        assert_eq!(
            changes,
            vec![
                Change::Room("!r:x".into()),
                Change::Typing {
                    room_id: "!r:x".into(),
                    user_id: "@u:x".into(),
                    timeout_ms: None
                },
                Change::User("@u:x".into()),
            ]
        );
        assert!(outbox.take().is_empty(), "taken changes are gone");
    }

    #[test]
    fn many_changes_split_into_payloads_under_the_limit() {
        let changes: Vec<Change> = (0..2000)
            .map(|i| Change::User(format!("@user{i}:example.org")))
            .collect();
        let split = payloads("me", changes.clone());
        assert!(split.len() > 1);
        assert!(split.iter().all(|p| p.len() <= PAYLOAD_BYTES), "a payload is too long");
        let decoded: Vec<Change> = split
            .iter()
            .map(|p| decode(p))
            .inspect(|m| assert_eq!(m.from, "me"))
            .flat_map(|m| m.changes)
            .collect();
        assert_eq!(decoded, changes);
        assert!(payloads("me", Vec::new()).is_empty());
    }
}
