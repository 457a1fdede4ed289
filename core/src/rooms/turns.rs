//! Turns to add an event to a room, taken inside this process before the room's row lock.
//!
//! Concurrent senders into one room would otherwise all queue on that row lock inside
//! PostgreSQL, each holding a backend that sleeps, wakes and retries the lock: under load that
//! lock traffic cost PostgreSQL a fifth of its time in a one-room send. Waiting here costs a
//! task switch.
//!
//! A turn also carries the room's head as the last sender here committed it. The next sender
//! builds on it without locking the row first: its write batch sets the new head only if the
//! row still holds that one (a compare-and-set the batch requires), which saves a round trip
//! while holding the turn. If another process (or a path here that takes no turn) moved the
//! room, the batch writes nothing and the send starts again under the row lock.
//!
//! SQLite needs no turns: its one writer already serialises every write, and holding a room's
//! turn through a commit would keep that room's writes out of the writer's group commit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::storage::rooms::Head;

/// Rooms tracked before the idle ones (and the heads they remember) are swept from the map.
const SWEEP_AT: usize = 1024;

#[derive(Default)]
pub struct RoomTurns {
    rooms: Mutex<HashMap<String, Arc<AsyncMutex<Option<Head>>>>>,
}

/// A room's turn, held until dropped.
pub struct Turn(OwnedMutexGuard<Option<Head>>);

impl Turn {
    /// The room's head as the last sender here committed it, if known.
    pub fn head(&self) -> Option<&Head> {
        self.0.as_ref()
    }

    /// Records the head this turn's send committed (`None`: unknown, read it next time).
    pub fn remember(&mut self, head: Option<Head>) {
        *self.0 = head.map(|h| Head {
            push_members: None,
            ..h
        });
    }
}

impl RoomTurns {
    /// Waits for the room's turn in this process.
    pub async fn take(&self, room_id: &str) -> Turn {
        let turn = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if !rooms.contains_key(room_id) && rooms.len() >= SWEEP_AT {
                // Nobody holds or awaits these turns: only the map refers to them.
                rooms.retain(|_, t| Arc::strong_count(t) > 1);
            }
            rooms.entry(room_id.to_owned()).or_default().clone()
        };
        Turn(turn.lock_owned().await)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_turn_per_room_at_a_time() {
        let turns = Arc::new(RoomTurns::default());
        let first = turns.take("!a:x").await;
        // Another room is free.
        let _other = turns.take("!b:x").await;
        // The same room waits for the first turn to end.
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take("!a:x").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the turn passes on")
            .unwrap();
    }

    #[tokio::test]
    async fn a_turn_passes_on_the_head_it_remembered() {
        let turns = RoomTurns::default();
        let mut turn = turns.take("!a:x").await;
        assert!(turn.head().is_none());
        turn.remember(Some(Head {
            current_group: Some(7),
            extremities: vec!["$e".into()],
            push_members: Some(Vec::new()),
        }));
        drop(turn);
        let turn = turns.take("!a:x").await;
        let head = turn.head().expect("remembered");
        assert_eq!(
            (head.current_group, head.extremities.as_slice()),
            (Some(7), &["$e".to_owned()][..])
        );
        assert!(head.push_members.is_none(), "members are read afresh by every send");
    }
}
