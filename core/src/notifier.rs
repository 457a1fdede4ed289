//! Wakes waiting `/sync` requests when a stream moves. Within a process this is a broadcast
//! of stream positions; processes sharing one PostgreSQL will relay through LISTEN/NOTIFY.

use tokio::sync::watch;

pub struct Notifier {
    /// The highest `events` stream position committed by this process.
    events: watch::Sender<i64>,
    /// Bumped on any other change (account data, receipts, typing...).
    other: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier { events: watch::channel(0).0, other: watch::channel(0).0 }
    }

    pub fn event_committed(&self, pos: i64) {
        self.events.send_if_modified(|cur| {
            if pos > *cur {
                *cur = pos;
                true
            } else {
                false
            }
        });
    }

    pub fn other_changed(&self) {
        self.other.send_modify(|v| *v += 1);
    }

    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.events.subscribe()
    }

    pub fn subscribe_other(&self) -> watch::Receiver<u64> {
        self.other.subscribe()
    }
}
