//! `Core`: the handle every layer above uses: database, server identity, notifier.

use std::sync::Arc;

use ruma::OwnedServerName;

use crate::{ephemeral::typing::Typing, notifier::Notifier, signing_key::ServerKey, Db};

#[derive(Clone)]
pub struct Core {
    pub db: Db,
    pub server_name: OwnedServerName,
    pub key: Arc<ServerKey>,
    pub notifier: Arc<Notifier>,
    pub typing: Arc<Typing>,
    /// Sliding sync connections of this process.
    pub sliding: Arc<crate::sync::sliding::Connections>,
    /// Reads this process may skip (see memo.rs for what they may and may not decide).
    pub memos: Arc<crate::memo::Memos>,
    /// Turns to send into a room, taken before its row lock (see rooms::turns).
    pub room_turns: Arc<crate::rooms::turns::RoomTurns>,
    /// The sync streams' positions, read once for the requests that ask together.
    pub positions: Arc<crate::streams::SharedPositions>,
    /// Where older history of rooms joined over federation comes from (installed by the
    /// federation crate; see rooms::history).
    pub history: Arc<crate::rooms::history::History>,
    /// Wakes this process's delayed-event timer when an event is scheduled or restarted here.
    pub delayed_wake: Arc<tokio::sync::Notify>,
    /// Where this process last recorded each session as seen (admin whois).
    pub seen: Arc<crate::admin::seen::Seen>,
    /// The registered application services (set at start from the configuration).
    pub appservices: Arc<crate::appservice::Registry>,
}

impl Core {
    pub fn new(db: Db, server_name: OwnedServerName, key: ServerKey) -> Core {
        Core {
            positions: crate::streams::SharedPositions::new(db.clone()),
            db,
            server_name,
            key: Arc::new(key),
            notifier: Arc::new(Notifier::new()),
            typing: Arc::new(Typing::default()),
            sliding: Arc::default(),
            memos: Arc::default(),
            room_turns: Arc::default(),
            history: Arc::default(),
            delayed_wake: Arc::default(),
            seen: Arc::default(),
            appservices: Arc::default(),
        }
    }

    /// Whether a user ID belongs to this server.
    pub fn is_local(&self, user_id: &ruma::UserId) -> bool {
        user_id.server_name() == self.server_name
    }
}
