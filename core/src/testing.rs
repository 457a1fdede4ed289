//! Test scenes for core's unit tests: a fresh database on each configured backend (SQLite
//! always; PostgreSQL when `WEFT_TEST_POSTGRES` names a server), this server, a stand-in for
//! another server sharing the database (its own name and key), and a public room of this
//! server's alice.

use std::path::Path;

use ruma::{room_version_rules::RoomVersionRules, user_id, RoomVersionId, UserId};
use serde_json::{json, Map};

use crate::{
    events::{
        builder::{self, EventTemplate},
        pipeline::{Outcome, StateAt},
        rules_for, Pdu, StateMap,
    },
    rooms::{
        self,
        create::{create_room, CreateRoom, Preset},
        writer::{receive, Received},
    },
    signing_key,
    storage::{events, rooms as room_store},
    Core, Db,
};

pub const REMOTE: &str = "remote.test";

/// A fresh database on each configured backend, with its own directory for keys, and the
/// PostgreSQL database's name to drop afterwards.
async fn databases() -> Vec<(Db, tempdir::Dir, Option<(String, String)>)> {
    let mut out = Vec::new();
    let dir = tempdir::Dir::new();
    out.push((
        Db::connect(&format!("sqlite://{}/weft.db", dir.path.display()), 4)
            .await
            .unwrap(),
        dir,
        None,
    ));
    match std::env::var("WEFT_TEST_POSTGRES") {
        Ok(base) => {
            let name = format!("weft_pipeline_{}", crate::util::random_string(12).to_lowercase());
            let admin = Db::connect(&base, 1).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(admin.pool())
                .await
                .unwrap();
            admin.close().await;
            let (prefix, _) = base.rsplit_once('/').expect("a database URL ends in its name");
            let db = Db::connect(&format!("{prefix}/{name}"), 4).await.unwrap();
            out.push((db, tempdir::Dir::new(), Some((base, name))));
        }
        Err(_) => eprintln!("!!! WEFT_TEST_POSTGRES is not set: the PostgreSQL half of this test was SKIPPED !!!"),
    }
    for (db, _, _) in &out {
        db.migrate().await.unwrap();
    }
    out
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!("weft-pipeline-{}", crate::util::random_string(12)));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// This server, the stand-in for another one, and a public room of this server's alice.
pub struct Scene {
    pub local: Core,
    pub remote: Core,
    pub room_id: String,
    pub rules: RoomVersionRules,
}

pub const VERSION: &str = "10";

impl Scene {
    pub async fn new(db: Db, dir: &Path) -> Scene {
        let key = |name: &str| signing_key::load_or_create(&dir.join(name)).unwrap();
        let local = Core::new(db.clone(), "local.test".try_into().unwrap(), key("local.key"));
        let remote = Core::new(db, REMOTE.try_into().unwrap(), key("remote.key"));
        let created = create_room(
            &local,
            user_id!("@alice:local.test"),
            CreateRoom {
                version: RoomVersionId::try_from(VERSION).unwrap(),
                preset: Preset::PublicChat,
                creation_content: Map::new(),
                power_level_override: None,
                name: None,
                topic: None,
                alias: None,
                invite: Vec::new(),
                is_direct: false,
                initial_state: Vec::new(),
                public: false,
            },
        )
        .await
        .unwrap();
        Scene {
            local,
            remote,
            room_id: created.room_id,
            rules: rules_for(VERSION).unwrap(),
        }
    }

    /// An event of the other server's `sender`, built on the room's head as this server
    /// knows it, with `edit` applied to that head and state first.
    pub async fn remote_event(
        &self,
        sender: &UserId,
        template: EventTemplate,
        edit: impl FnOnce(&mut room_store::Head, &mut StateMap),
    ) -> Pdu {
        let mut conn = self.local.db.conn().await.unwrap();
        let mut head = room_store::head(&mut conn, &self.room_id).await.unwrap();
        let mut state = (*rooms::current_state(&self.local, &mut conn, &self.room_id)
            .await
            .unwrap())
        .clone();
        edit(&mut head, &mut state);
        builder::build(
            &self.remote,
            &mut conn,
            &self.rules,
            Some(&self.room_id),
            sender,
            &template,
            &head,
            &state,
        )
        .await
        .unwrap()
    }

    pub async fn receive(&self, pdu: Pdu, state_at: StateAt) -> Received {
        receive(&self.local, VERSION, pdu, &rooms::own_keys(&self.remote), state_at)
            .await
            .unwrap()
    }

    pub async fn membership(&self, user: &UserId) -> Option<String> {
        let mut conn = self.local.db.conn().await.unwrap();
        room_store::membership(&mut conn, &self.room_id, user.as_str())
            .await
            .unwrap()
            .map(|m| m.membership)
    }

    pub async fn row(&self, pdu: &Pdu) -> Option<events::StoredEvent> {
        let mut conn = self.local.db.conn().await.unwrap();
        events::get(&mut conn, pdu.event_id.as_str()).await.unwrap()
    }

    pub async fn extremities(&self) -> Vec<String> {
        let mut conn = self.local.db.conn().await.unwrap();
        room_store::head(&mut conn, &self.room_id).await.unwrap().extremities
    }
}

pub fn stored(received: Received) -> Outcome {
    match received {
        Received::Stored(outcome) => outcome,
        Received::Missing(missing) => panic!("unexpectedly missing {missing:?}"),
    }
}

pub fn join() -> EventTemplate {
    EventTemplate::state("m.room.member", "@bob:remote.test", json!({"membership": "join"}))
}

pub fn message(body: &str) -> EventTemplate {
    EventTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

/// The other server's user.
pub fn bob() -> &'static UserId {
    user_id!("@bob:remote.test")
}

/// Runs `test` on a fresh scene on each backend.
pub async fn on_each_backend<F: AsyncFn(&Scene)>(test: F) {
    for (db, dir, postgres) in databases().await {
        let scene = Scene::new(db, &dir.path).await;
        test(&scene).await;
        scene.local.db.close().await;
        if let Some((base, name)) = postgres {
            let admin = Db::connect(&base, 1).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(admin.pool())
                .await;
            admin.close().await;
        }
    }
}
