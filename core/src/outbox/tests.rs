//! The outbound queue on both backends: what the tailer queues for whom, batches, acks,
//! backoff and leases.

use std::time::Duration;

use ruma::user_id;
use serde_json::{json, Value};
use sqlx::Row;

use super::{lease, queue, tail, Backoff};
use crate::{
    events::{builder::EventTemplate, pipeline::StateAt},
    rooms::{membership, writer},
    testing::{bob, join, message, on_each_backend, stored, Scene, REMOTE},
    util, Core,
};

/// The outbox as (destination, pos, kind, event_id), in position order.
async fn outbox(core: &Core) -> Vec<(String, i64, String, Option<String>)> {
    let rows = sqlx::query("SELECT destination, pos, kind, event_id FROM federation_outbox ORDER BY pos, destination")
        .fetch_all(core.db.pool())
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
}

async fn bob_joins(s: &Scene) {
    let join = s.remote_event(bob(), join(), |_, _| {}).await;
    let outcome = stored(s.receive(join, StateAt::PrevEvents).await);
    assert!(outcome.rejected.is_none() && !outcome.soft_failed, "{outcome:?}");
}

async fn alice_says(s: &Scene, body: &str) -> String {
    writer::send(&s.local, &s.room_id, user_id!("@alice:local.test"), message(body), None)
        .await
        .unwrap()
        .event_id
}

async fn enqueue(core: &Core, destination: &str, edu: Value) -> i64 {
    let mut tx = core.db.write().await.unwrap();
    let pos = queue::enqueue_edu(&mut tx, destination, &edu).await.unwrap();
    tx.commit().await.unwrap();
    pos
}

fn typing(n: usize) -> Value {
    json!({"edu_type": "m.typing", "content": {"n": n}})
}

fn bodies(batch: &queue::Batch) -> Vec<String> {
    batch
        .pdus
        .iter()
        .map(|raw| {
            let pdu: Value = serde_json::from_str(raw.get()).unwrap();
            pdu["content"]["body"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_local_message_is_queued_once_for_the_remote_server_in_the_room() {
    on_each_backend(async |s: &Scene| {
        bob_joins(s).await;
        let event_id = alice_says(s, "hello").await;
        // Two tailers at once (one whose lease lapsed, say) and then another round.
        let (a, b) = tokio::join!(tail(&s.local), tail(&s.local));
        assert_eq!(a.unwrap() + b.unwrap(), 1);
        assert_eq!(tail(&s.local).await.unwrap(), 0);
        let rows = outbox(&s.local).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].0.as_str(), rows[0].2.as_str()), (REMOTE, "pdu"));
        assert_eq!(rows[0].3.as_deref(), Some(event_id.as_str()));

        let batch = queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap();
        assert_eq!(bodies(&batch), ["hello"]);
        let body = batch.body("local.test", 7);
        assert_eq!(body["origin"], "local.test");
        assert_eq!(body["pdus"][0]["content"]["body"], "hello");
        assert_eq!(body["edus"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn events_of_remote_senders_and_rooms_without_remote_servers_are_not_queued() {
    on_each_backend(async |s: &Scene| {
        alice_says(s, "nobody else is here").await;
        assert_eq!(tail(&s.local).await.unwrap(), 0);
        bob_joins(s).await;
        let msg = s.remote_event(bob(), message("from bob"), |_, _| {}).await;
        stored(s.receive(msg, StateAt::PrevEvents).await);
        assert_eq!(tail(&s.local).await.unwrap(), 0);
        assert_eq!(outbox(&s.local).await, []);
        assert!(queue::next_batch(&s.local, REMOTE).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_kicked_remote_user_s_server_still_gets_the_kick() {
    on_each_backend(async |s: &Scene| {
        bob_joins(s).await;
        let kick = membership::kick(&s.local, &s.room_id, user_id!("@alice:local.test"), bob(), None)
            .await
            .unwrap();
        assert_eq!(s.membership(bob()).await.as_deref(), Some("leave"));
        assert_eq!(tail(&s.local).await.unwrap(), 1);
        let rows = outbox(&s.local).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].0, REMOTE);
        assert_eq!(rows[0].3.as_deref(), Some(kick.event_id.as_str()));

        // Once gone, the server is sent nothing more.
        alice_says(s, "after the kick").await;
        assert_eq!(tail(&s.local).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn batches_hold_at_most_50_pdus_and_100_edus_in_order() {
    on_each_backend(async |s: &Scene| {
        bob_joins(s).await;
        let sent: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        for body in &sent {
            alice_says(s, body).await;
        }
        for n in 0..120 {
            enqueue(&s.local, REMOTE, typing(n)).await;
        }
        // Queued after the EDUs: the PDUs take later positions.
        assert_eq!(tail(&s.local).await.unwrap(), 60);

        let mut pdus = Vec::new();
        let mut edus = Vec::new();
        let mut txn_ids = Vec::new();
        while let Some(batch) = queue::next_batch(&s.local, REMOTE).await.unwrap() {
            assert!(batch.pdus.len() <= 50 && batch.edus.len() <= 100, "{batch:?}");
            pdus.extend(bodies(&batch));
            edus.extend(
                batch
                    .edus
                    .iter()
                    .map(|e| serde_json::from_str::<Value>(e.get()).unwrap()["content"]["n"].clone()),
            );
            txn_ids.push(batch.txn_id());
            queue::ack(&s.local, REMOTE, batch.last_pos).await.unwrap();
        }
        assert_eq!(pdus, sent);
        assert_eq!(edus, (0..120).map(Value::from).collect::<Vec<_>>());
        // 100 EDUs; 20 EDUs and the first 50 PDUs; the last 10 PDUs.
        assert_eq!(txn_ids.len(), 3, "{txn_ids:?}");
        assert_eq!(outbox(&s.local).await, []);
    })
    .await;
}

#[tokio::test]
async fn ack_removes_exactly_the_acked_rows() {
    on_each_backend(async |s: &Scene| {
        for n in 0..3 {
            enqueue(&s.local, "a.test", typing(n)).await;
        }
        enqueue(&s.local, "b.test", typing(0)).await;
        let batch = queue::next_batch(&s.local, "a.test").await.unwrap().unwrap();
        assert_eq!(batch.edus.len(), 3);
        // Queued while the batch was out: not part of it, and kept by its ack.
        let later = enqueue(&s.local, "a.test", typing(3)).await;
        queue::ack(&s.local, "a.test", batch.last_pos).await.unwrap();
        let rows = outbox(&s.local).await;
        let left: Vec<(&str, i64)> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
        assert_eq!(left.len(), 2, "{rows:?}");
        assert!(left.contains(&("a.test", later)) && left.iter().any(|r| r.0 == "b.test"));

        let next = queue::next_batch(&s.local, "a.test").await.unwrap().unwrap();
        assert_eq!((next.first_pos, next.last_pos), (later, later));
        let state = super::destination_state(&s.local, "a.test").await.unwrap().unwrap();
        assert!(state.last_success_ts.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_batch_read_again_without_ack_is_the_same_transaction() {
    on_each_backend(async |s: &Scene| {
        for n in 0..3 {
            enqueue(&s.local, REMOTE, typing(n)).await;
        }
        // Two senders at once (a lease taken over from a stalled holder) get the same batch.
        let (first, other) = tokio::join!(queue::next_batch(&s.local, REMOTE), queue::next_batch(&s.local, REMOTE));
        let first = first.unwrap().unwrap();
        assert_eq!(other.unwrap().unwrap().txn_id(), first.txn_id());
        // The process dies before the destination answers; more is queued meanwhile.
        enqueue(&s.local, REMOTE, typing(3)).await;
        let again = queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap();
        assert_eq!(again.txn_id(), first.txn_id());
        assert_eq!(again.edus.len(), 3);
        assert_eq!(
            again.edus.iter().map(|e| e.get()).collect::<Vec<_>>(),
            first.edus.iter().map(|e| e.get()).collect::<Vec<_>>()
        );
        // A failure keeps it pinned too.
        super::record_failure(&s.local, REMOTE, "connection refused")
            .await
            .unwrap();
        assert_eq!(
            queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap().txn_id(),
            first.txn_id()
        );

        queue::ack(&s.local, REMOTE, first.last_pos).await.unwrap();
        let next = queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap();
        assert_ne!(next.txn_id(), first.txn_id());
        assert_eq!(next.edus.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_discarded_batch_is_dropped_without_backoff() {
    on_each_backend(async |s: &Scene| {
        enqueue(&s.local, REMOTE, typing(0)).await;
        let batch = queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap();
        queue::discard(&s.local, REMOTE, batch.last_pos, "400 M_BAD_JSON")
            .await
            .unwrap();
        assert!(queue::next_batch(&s.local, REMOTE).await.unwrap().is_none());
        let state = super::destination_state(&s.local, REMOTE).await.unwrap().unwrap();
        assert_eq!(
            (state.retry_count, state.last_error.as_deref()),
            (0, Some("400 M_BAD_JSON"))
        );
    })
    .await;
}

#[tokio::test]
async fn backoff_grows_and_ready_destinations_respect_it() {
    on_each_backend(async |s: &Scene| {
        enqueue(&s.local, "a.test", typing(0)).await;
        enqueue(&s.local, "b.test", typing(0)).await;
        let now = util::now_ms();
        assert_eq!(
            super::ready_destinations(&s.local, now).await.unwrap(),
            ["a.test", "b.test"]
        );

        let mut delays = Vec::new();
        for _ in 0..3 {
            let before = util::now_ms();
            let retry = super::record_failure(&s.local, "b.test", "timed out").await.unwrap();
            delays.push((retry.retry_count, retry.retry_after_ts - before));
        }
        // 5 s, 10 s, 20 s (give or take the time the calls took).
        for ((count, delay), expected) in delays.iter().zip([5_000, 10_000, 20_000]) {
            assert!(*delay >= expected && *delay < expected + 2_000, "{delays:?}");
            assert!(*count >= 1);
        }
        assert_eq!(delays.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2, 3]);
        let state = super::destination_state(&s.local, "b.test").await.unwrap().unwrap();
        assert_eq!(state.last_error.as_deref(), Some("timed out"));

        let now = util::now_ms();
        assert_eq!(super::ready_destinations(&s.local, now).await.unwrap(), ["a.test"]);
        assert_eq!(
            super::ready_destinations(&s.local, state.retry_after_ts).await.unwrap(),
            ["a.test", "b.test"]
        );

        // The server contacted us: it is back.
        assert!(super::wake_destination(&s.local, "b.test").await.unwrap());
        assert!(!super::wake_destination(&s.local, "b.test").await.unwrap());
        assert_eq!(
            super::ready_destinations(&s.local, now).await.unwrap(),
            ["a.test", "b.test"]
        );
        let retry = super::record_failure(&s.local, "b.test", "timed out").await.unwrap();
        assert_eq!(retry.retry_count, 1);

        // The cap.
        assert_eq!(Backoff::DEFAULT.delay(1), Duration::from_secs(5));
        assert_eq!(Backoff::DEFAULT.delay(15), Duration::from_secs(5 << 14));
        assert_eq!(Backoff::DEFAULT.delay(16), Duration::from_secs(86_400));
        assert_eq!(Backoff::DEFAULT.delay(i64::MAX), Duration::from_secs(86_400));
    })
    .await;
}

#[tokio::test]
async fn a_lease_is_refused_to_another_holder_until_it_expires() {
    on_each_backend(async |s: &Scene| {
        let ttl = Duration::from_secs(10);
        let t0 = util::now_ms();
        let acquire = |holder: &'static str, at: i64| lease::acquire_at(&s.local, "work", holder, ttl, at);
        assert!(acquire("A", t0).await.unwrap());
        assert!(!acquire("B", t0 + 1_000).await.unwrap());
        // A renews: the lease now runs to t0 + 12 s.
        assert!(acquire("A", t0 + 2_000).await.unwrap());
        assert!(!acquire("B", t0 + 11_000).await.unwrap());
        assert!(acquire("B", t0 + 12_000).await.unwrap(), "expired: B takes it over");
        assert!(!acquire("A", t0 + 13_000).await.unwrap());

        // Only the holder's release counts.
        lease::release(&s.local, "work", "A").await.unwrap();
        assert!(!acquire("A", t0 + 14_000).await.unwrap());
        lease::release(&s.local, "work", "B").await.unwrap();
        assert!(acquire("A", t0 + 14_000).await.unwrap());

        // Racing for a free lease: exactly one wins.
        let holders: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
        let results =
            futures::future::join_all(holders.iter().map(|h| lease::try_acquire(&s.local, "race", h, ttl))).await;
        assert_eq!(results.into_iter().filter(|r| *r.as_ref().unwrap()).count(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_lagging_tailer_sends_a_server_only_what_came_after_it_joined() {
    on_each_backend(async |s: &Scene| {
        // Nothing tails while these happen (the sender was down, say).
        alice_says(s, "before bob").await;
        bob_joins(s).await;
        alice_says(s, "with bob").await;
        // Bob's later profile change makes his current membership row newer than "with bob":
        // the state after that message still shows him joined.
        let rename = EventTemplate::state(
            "m.room.member",
            bob().as_str(),
            json!({"membership": "join", "displayname": "Bob"}),
        );
        let rename = s.remote_event(bob(), rename, |_, _| {}).await;
        stored(s.receive(rename, StateAt::PrevEvents).await);

        assert_eq!(tail(&s.local).await.unwrap(), 1);
        let batch = queue::next_batch(&s.local, REMOTE).await.unwrap().unwrap();
        assert_eq!(bodies(&batch), ["with bob"]);
    })
    .await;
}
