//! The sender against a fake transport, on SQLite and (when `WEFT_TEST_POSTGRES` names a
//! server) PostgreSQL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{future::BoxFuture, FutureExt};
use ruma::ServerName;
use serde_json::{json, Value};
use tokio::{sync::watch, time::Instant};
use weft_core::{outbox, signing_key, Core, Db};

use super::{spawn_with, SendError, SenderConfig, Transport};

/// One attempt the fake transport saw.
#[derive(Clone, Debug)]
struct Attempt {
    destination: String,
    txn_id: String,
    body: Value,
    started: Instant,
    ended: Instant,
}

/// How the fake answers one destination.
#[derive(Clone, Copy)]
enum Behaviour {
    Accept,
    /// Waits, then fails (retryable).
    FailAfter(Duration),
    /// Never answers.
    Hang,
    /// Refuses for good.
    Refuse,
}

#[derive(Default)]
struct Fake {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    attempts: Mutex<Vec<Attempt>>,
}

impl Fake {
    fn new(behaviours: &[(&str, Behaviour)]) -> Arc<Fake> {
        Arc::new(Fake {
            behaviours: Mutex::new(behaviours.iter().map(|(d, b)| (d.to_string(), *b)).collect()),
            attempts: Mutex::default(),
        })
    }

    fn attempts(&self, destination: &str) -> Vec<Attempt> {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .iter()
            .filter(|a| a.destination == destination)
            .cloned()
            .collect()
    }

    /// The `n` of every EDU the destination accepted, in order.
    fn delivered(&self, destination: &str) -> Vec<i64> {
        self.attempts(destination)
            .iter()
            .flat_map(|a| a.body["edus"].as_array().cloned().unwrap_or_default())
            .map(|edu| edu["content"]["n"].as_i64().unwrap())
            .collect()
    }
}

impl Transport for Fake {
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: Value,
    ) -> BoxFuture<'_, Result<(), SendError>> {
        let destination = destination.to_string();
        let txn_id = txn_id.to_owned();
        let behaviour = self
            .behaviours
            .lock()
            .unwrap()
            .get(&destination)
            .copied()
            .unwrap_or(Behaviour::Accept);
        async move {
            let started = Instant::now();
            let result = match behaviour {
                Behaviour::Accept => Ok(()),
                Behaviour::FailAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    Err(SendError::retryable("connection timed out"))
                }
                Behaviour::Hang => futures::future::pending().await,
                Behaviour::Refuse => Err(SendError::permanent("400 M_BAD_JSON")),
            };
            // Only answered attempts are recorded (a hung one never returns).
            self.attempts.lock().unwrap().push(Attempt {
                destination,
                txn_id,
                body,
                started,
                ended: Instant::now(),
            });
            result
        }
        .boxed()
    }
}

/// A fresh migrated database on each configured backend with a core on it, a directory for
/// keys and SQLite's file, and the PostgreSQL database to drop afterwards (see `cleanup`).
type TestCore = (Core, std::path::PathBuf, Option<(String, String)>);

async fn cores() -> Vec<TestCore> {
    let dir = std::env::temp_dir().join(format!("weft-sender-{}", weft_core::util::random_string(12)));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dbs = vec![(
        Db::connect(&format!("sqlite://{}/weft.db", dir.display()), 4)
            .await
            .unwrap(),
        None,
    )];
    match std::env::var("WEFT_TEST_POSTGRES") {
        Ok(base) => {
            let name = format!("weft_sender_{}", weft_core::util::random_string(12).to_lowercase());
            let admin = Db::connect(&base, 1).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(admin.pool())
                .await
                .unwrap();
            admin.close().await;
            let (prefix, _) = base.rsplit_once('/').unwrap();
            dbs.push((
                Db::connect(&format!("{prefix}/{name}"), 4).await.unwrap(),
                Some((base.clone(), name)),
            ));
        }
        Err(_) => eprintln!("!!! WEFT_TEST_POSTGRES is not set: the PostgreSQL half of this test was SKIPPED !!!"),
    }
    let mut out = Vec::new();
    for (db, postgres) in dbs {
        db.migrate().await.unwrap();
        let key = signing_key::load_or_create(&dir.join("signing.key")).unwrap();
        out.push((
            Core::new(db, "local.test".try_into().unwrap(), key),
            dir.clone(),
            postgres,
        ));
    }
    out
}

async fn cleanup(core: Core, dir: &std::path::Path, postgres: Option<(String, String)>) {
    core.db.close().await;
    if let Some((base, name)) = postgres {
        let admin = Db::connect(&base, 1).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(admin.pool())
            .await;
        admin.close().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn config() -> SenderConfig {
    SenderConfig {
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(3),
        backoff: outbox::Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        holder: None,
    }
}

async fn enqueue(core: &Core, destination: &str, ns: std::ops::Range<i64>) {
    let mut tx = core.db.write().await.unwrap();
    for n in ns {
        let edu = json!({"edu_type": "m.typing", "content": {"n": n}});
        outbox::enqueue_edu(&mut tx, destination, &edu).await.unwrap();
    }
    tx.commit().await.unwrap();
    // What typing and receipts do after their commit.
    core.notifier.room_changed("!any:local.test");
}

/// Polls `check` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

async fn leases(core: &Core) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM leases")
        .fetch_one(core.db.pool())
        .await
        .unwrap()
}

async fn stop_and_wait(stop: watch::Sender<bool>, sender: tokio::task::JoinHandle<()>) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), sender)
        .await
        .expect("the sender stops promptly")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_neither_delays_the_others_nor_is_given_up() {
    for (core, dir, postgres) in cores().await {
        let slow_failure = Duration::from_millis(600);
        let fake = Fake::new(&[("dead.test", Behaviour::FailAfter(slow_failure))]);
        enqueue(&core, "dead.test", 0..5).await;
        enqueue(&core, "good.test", 0..250).await;
        let (stop, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let sender = spawn_with(core.clone(), fake.clone(), stop_rx, config());

        // Three transactions (100 + 100 + 50 EDUs), all while the dead server's first attempt
        // is still hanging.
        assert!(eventually(Duration::from_secs(5), || fake.delivered("good.test").len() == 250).await);
        let good = fake.attempts("good.test");
        assert_eq!(
            good.len(),
            3,
            "{:?}",
            good.iter().map(|a| &a.txn_id).collect::<Vec<_>>()
        );
        assert!(
            good.last().unwrap().ended < started + slow_failure,
            "the good server waited for the dead one"
        );
        // More for the good server while the dead one is backed off: sent at once.
        enqueue(&core, "good.test", 250..260).await;
        assert!(eventually(Duration::from_secs(2), || fake.delivered("good.test").len() == 260).await);

        // The dead server is retried after growing delays: 200 ms, 400 ms, 800 ms.
        assert!(eventually(Duration::from_secs(10), || fake.attempts("dead.test").len() >= 4).await);
        let dead = fake.attempts("dead.test");
        let waits: Vec<Duration> = dead.windows(2).map(|w| w[1].started - w[0].ended).collect();
        for (wait, backoff) in waits.iter().zip([200, 400, 800]) {
            assert!(*wait >= Duration::from_millis(backoff - 20), "{waits:?}");
        }
        assert!(waits[2] > waits[1] && waits[1] > waits[0], "{waits:?}");
        // Always the same transaction, since none got through.
        assert!(dead.iter().all(|a| a.txn_id == dead[0].txn_id));
        // (The fourth failure may still be on its way to the database.)
        let state = outbox::destination_state(&core, "dead.test").await.unwrap().unwrap();
        assert!(state.retry_count >= 3, "{state:?}");
        assert_eq!(state.last_error.as_deref(), Some("connection timed out"));

        // Nothing delivered twice, every transaction ID new.
        assert_eq!(fake.delivered("good.test"), (0..260).collect::<Vec<_>>());
        let good = fake.attempts("good.test");
        let mut ids: Vec<&str> = good.iter().map(|a| a.txn_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), good.len());
        assert_eq!(good[0].body["origin"], "local.test");

        stop_and_wait(stop, sender).await;
        assert_eq!(leases(&core).await, 0, "leases released on shutdown");

        // A restarted sender sends nothing the good server already has.
        let (stop, stop_rx) = watch::channel(false);
        let sender = spawn_with(core.clone(), fake.clone(), stop_rx, config());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.attempts("good.test").len(), good.len());
        stop_and_wait(stop, sender).await;
        cleanup(core, &dir, postgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_short_is_resent_with_the_same_transaction_id_after_a_restart() {
    for (core, dir, postgres) in cores().await {
        enqueue(&core, "remote.test", 0..3).await;
        enqueue(&core, "refusing.test", 0..3).await;
        let hanging = Fake::new(&[("remote.test", Behaviour::Hang), ("refusing.test", Behaviour::Refuse)]);
        let (stop, stop_rx) = watch::channel(false);
        let sender = spawn_with(core.clone(), hanging.clone(), stop_rx, config());
        // The refused transaction is dropped, not retried.
        assert!(eventually(Duration::from_secs(5), || hanging.attempts("refusing.test").len() == 1).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hanging.attempts("refusing.test").len(), 1);
        assert!(outbox::next_batch(&core, "refusing.test").await.unwrap().is_none());
        // The hung send: the sender stops anyway (the process shuts down mid-send).
        let pinned = outbox::next_batch(&core, "remote.test")
            .await
            .unwrap()
            .unwrap()
            .txn_id();
        stop_and_wait(stop, sender).await;

        // Restarted: the same transaction, once, then nothing more.
        let fake = Fake::new(&[]);
        let (stop, stop_rx) = watch::channel(false);
        let sender = spawn_with(core.clone(), fake.clone(), stop_rx, config());
        assert!(eventually(Duration::from_secs(5), || fake.delivered("remote.test").len() == 3).await);
        let attempts = fake.attempts("remote.test");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].txn_id, pinned);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.attempts("remote.test").len(), 1);
        stop_and_wait(stop, sender).await;
        cleanup(core, &dir, postgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_one_database_send_each_transaction_once() {
    for (core, dir, postgres) in cores().await {
        let fake = Fake::new(&[]);
        let (stop, stop_rx) = watch::channel(false);
        // Two processes' senders (each its own holder); the second shares the database only.
        let other = Core::new(
            core.db.clone(),
            core.server_name.clone(),
            signing_key::load_or_create(&dir.join("signing.key")).unwrap(),
        );
        let senders = [
            spawn_with(core.clone(), fake.clone(), stop_rx.clone(), config()),
            spawn_with(other.clone(), fake.clone(), stop_rx, config()),
        ];
        let destinations = ["a.test", "b.test", "c.test"];
        for round in 0..5 {
            for d in destinations {
                enqueue(&core, d, round * 40..(round + 1) * 40).await;
                // The other process hears of it too (PostgreSQL's relay does this).
                other.notifier.room_changed("!any:local.test");
            }
        }
        for d in destinations {
            assert!(
                eventually(Duration::from_secs(5), || fake.delivered(d).len() >= 200).await,
                "{d}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for d in destinations {
            assert_eq!(fake.delivered(d), (0..200).collect::<Vec<_>>(), "{d}");
        }
        stop.send(true).unwrap();
        for sender in senders {
            tokio::time::timeout(Duration::from_secs(2), sender)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(leases(&core).await, 0);
        cleanup(core, &dir, postgres).await;
    }
}
