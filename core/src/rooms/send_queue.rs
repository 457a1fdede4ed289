//! Sends into one room, combined: while one transaction sends into a room, the sends that
//! arrive queue up, and the next transaction takes all of them.
//!
//! Creating events in a room is serialised by the room's row lock, held until COMMIT, so one
//! transaction per event caps a busy room at one commit (a WAL flush) per event. Here the
//! first send to find the room idle becomes its leader: it locks the room, builds and persists
//! every queued event in turn (each on top of the one before), commits once and answers each
//! sender. The row lock still orders senders across processes; this only makes each holder
//! of it do more.
//!
//! An event the auth rules reject writes nothing and fails alone. A database error fails the
//! whole transaction, and with it every send it carried; nothing is reported sent that was
//! not committed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::OwnedUserId;
use tokio::sync::oneshot;

use super::{builder::EventTemplate, notify_committed, send_at, Sent};
use crate::{
    storage::{events, rooms},
    Core, Error, Result,
};

/// One send waiting for its room.
struct Job {
    sender: OwnedUserId,
    template: EventTemplate,
    /// (user, device, transaction ID) for idempotent sends.
    txn: Option<(String, String, String)>,
    reply: oneshot::Sender<Result<Sent>>,
}

#[derive(Default)]
struct RoomQueue {
    pending: Mutex<Vec<Job>>,
    /// Held by the leader from taking the queue until its transaction ends.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// The queues of rooms with sends in flight in this process.
#[derive(Default)]
pub struct SendQueues {
    rooms: Mutex<HashMap<String, Arc<RoomQueue>>>,
}

impl SendQueues {
    fn enter(&self, room_id: &str) -> Arc<RoomQueue> {
        let mut rooms = self.rooms.lock().expect("send queue map poisoned");
        rooms.entry(room_id.to_owned()).or_default().clone()
    }

    /// Forgets an idle room's queue: nobody but the map and the caller holds it.
    fn leave(&self, room_id: &str, queue: Arc<RoomQueue>) {
        let mut rooms = self.rooms.lock().expect("send queue map poisoned");
        if Arc::strong_count(&queue) == 2 && queue.pending.lock().expect("send queue poisoned").is_empty() {
            rooms.remove(room_id);
        }
    }
}

/// Sends one local event, in a transaction shared with the sends queued beside it.
pub async fn send(
    core: &Core,
    room_id: &str,
    sender: &ruma::UserId,
    template: EventTemplate,
    txn: Option<(&str, &str, &str)>,
) -> Result<Sent> {
    let queue = core.send_queues.enter(room_id);
    let (reply, answer) = oneshot::channel();
    queue.pending.lock().expect("send queue poisoned").push(Job {
        sender: sender.to_owned(),
        template,
        txn: txn.map(|(u, d, t)| (u.to_owned(), d.to_owned(), t.to_owned())),
        reply,
    });
    let turn = queue.turn.clone().lock_owned().await;
    let jobs = std::mem::take(&mut *queue.pending.lock().expect("send queue poisoned"));
    if jobs.is_empty() {
        // An earlier leader took this send along.
        drop(turn);
    } else {
        // The transaction runs on its own task: a sender that goes away (a closed connection)
        // must not cancel the sends of the others.
        let core = core.clone();
        let room = room_id.to_owned();
        tokio::spawn(async move {
            run(&core, &room, jobs).await;
            drop(turn);
        });
    }
    let sent = answer
        .await
        .map_err(|_| Error::Internal("the room's send was abandoned".into()));
    core.send_queues.leave(room_id, queue);
    sent?
}

/// Persists `jobs` in one transaction and answers each.
async fn run(core: &Core, room_id: &str, jobs: Vec<Job>) {
    let mut answers = Vec::with_capacity(jobs.len());
    let outcome = persist_all(core, room_id, &jobs, &mut answers).await;
    match outcome {
        Ok(()) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                if let Ok((sent, Some(pdu))) = &answer {
                    notify_committed(core, pdu);
                    let _ = job.reply.send(Ok(sent.clone()));
                } else {
                    let _ = job.reply.send(answer.map(|(sent, _)| sent));
                }
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(shared(&e)));
            }
        }
    }
}

/// An answer, with the event when this transaction created it.
type Answer = Result<(Sent, Option<crate::events::Pdu>)>;

async fn persist_all(core: &Core, room_id: &str, jobs: &[Job], answers: &mut Vec<Answer>) -> Result<()> {
    let mut tx = core.db.write().await?;
    let Some(locked) = rooms::lock(&mut tx, room_id).await? else {
        return Err(Error::NotFound("Unknown room".into()));
    };
    let mut current_group = locked.current_group;
    for job in jobs {
        let txn = job.txn.as_ref().map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str()));
        // Checked under the lock, so a retry racing its first attempt finds it (also when
        // both are in this transaction).
        if let Some((user, device, txn_id)) = txn {
            if let Some(event_id) = events::by_txn(&mut tx, user, device, txn_id, room_id).await? {
                let stream_pos = events::get(&mut tx, &event_id)
                    .await?
                    .and_then(|e| e.stream_pos)
                    .unwrap_or_default();
                answers.push(Ok((Sent { event_id, stream_pos }, None)));
                continue;
            }
        }
        match send_at(core, &mut tx, room_id, &job.sender, &job.template, txn, current_group).await {
            Ok(persisted) => {
                current_group = persisted.current_group;
                let sent = Sent {
                    event_id: persisted.pdu.event_id.to_string(),
                    stream_pos: persisted.stream_pos,
                };
                answers.push(Ok((sent, Some(persisted.pdu))));
            }
            // Refused before anything was written: only this send fails.
            Err(e @ (Error::Forbidden(_) | Error::BadJson(_) | Error::TooLarge(_) | Error::InvalidParam(_))) => {
                answers.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await
}

/// The error of a failed transaction, for each send it carried.
fn shared(e: &Error) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::Forbidden(m) => Error::Forbidden(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}
