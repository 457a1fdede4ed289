//! The schema's migrations (`migrations/`, `weft_core::db::migrations`) against those of the
//! release that wrote them twice, one directory per dialect, kept unchanged as fixtures in
//! `fixtures/migrations-20261125/` and applied by sqlx as that release did: a database made by
//! the old release and upgraded gets the same schema and `_sqlx_migrations` rows as a fresh
//! one, and keeps its data, starts a server and takes a new migration.

use serde_json::json;
use sqlx::{migrate::Migrator, AnyPool};
use weft_core::{
    db::migrations::{self, MigrationFiles, Migrations},
    Db,
};

use crate::{
    both_backends,
    harness::{test_config, Backend, TestDb, TestServer},
};

static OLD_POSTGRES: Migrator = sqlx::migrate!("tests/it/fixtures/migrations-20261125/postgres");
static OLD_SQLITE: Migrator = sqlx::migrate!("tests/it/fixtures/migrations-20261125/sqlite");

/// A database migrated as the old release did.
async fn old_database(backend: Backend) -> Option<(TestDb, Db)> {
    let test_db = TestDb::new(backend).await?;
    let db = Db::connect(&test_db.url, 2).await.unwrap();
    match backend {
        Backend::Postgres => OLD_POSTGRES.run(db.pool()).await.unwrap(),
        Backend::Sqlite => OLD_SQLITE.run(db.pool()).await.unwrap(),
    }
    Some((test_db, db))
}

/// The schema as sorted lines: every table, column (type, nullability, default), index,
/// constraint, trigger, view, sequence and function, and each applied migration's version,
/// description and checksum.
async fn schema(pool: &AnyPool, backend: Backend) -> Vec<String> {
    let queries: &[&str] = match backend {
        Backend::Sqlite => &[
            "SELECT type || ' ' || name || ' on ' || tbl_name || ': ' || COALESCE(sql, '') FROM sqlite_master",
            "SELECT 'column ' || m.name || '.' || c.name || ' #' || c.cid || ' ' || c.type || ' notnull=' \
             || c.\"notnull\" || ' default=' || COALESCE(c.dflt_value, '') || ' pk=' || c.pk \
             FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table'",
            "SELECT 'migration ' || version || ' ' || description || ' ' || lower(hex(checksum)) FROM _sqlx_migrations",
        ],
        Backend::Postgres => &[
            "SELECT format('table %s %s', table_name, table_type) FROM information_schema.tables \
             WHERE table_schema = 'public'",
            "SELECT format('column %s.%s #%s %s nullable=%s default=%s generated=%s %s identity=%s', \
             table_name, column_name, ordinal_position, data_type, is_nullable, column_default, \
             is_generated, generation_expression, is_identity) \
             FROM information_schema.columns WHERE table_schema = 'public'",
            "SELECT format('index %s: %s', indexname, indexdef) FROM pg_indexes WHERE schemaname = 'public'",
            "SELECT format('constraint %s.%s: %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
            "SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal \
             AND c.relnamespace = 'public'::regnamespace",
            "SELECT format('view %s: %s', table_name, view_definition) FROM information_schema.views \
             WHERE table_schema = 'public'",
            "SELECT format('sequence %s %s', sequence_name, data_type) FROM information_schema.sequences \
             WHERE sequence_schema = 'public'",
            "SELECT format('function %s', pg_get_functiondef(oid)) FROM pg_proc \
             WHERE pronamespace = 'public'::regnamespace",
            "SELECT format('migration %s %s %s', version, description, encode(checksum, 'hex')) FROM _sqlx_migrations",
        ],
    };
    let mut lines = Vec::new();
    for query in queries {
        let rows: Vec<(String,)> = sqlx::query_as(query).fetch_all(pool).await.unwrap();
        lines.extend(rows.into_iter().map(|(line,)| line));
    }
    lines.sort();
    lines
}

both_backends!(
    an_upgraded_database_gets_the_schema_of_a_fresh_one,
    |backend| async move {
        let Some((old_test_db, old)) = old_database(backend).await else {
            return;
        };
        // The old release's versions keep their recorded checksums (else this fails), and the
        // versions added since apply on top.
        old.migrate().await.unwrap();
        let new_test_db = TestDb::new(backend).await.unwrap();
        let new = Db::connect(&new_test_db.url, 2).await.unwrap();
        new.migrate().await.unwrap();

        let old_schema = schema(old.pool(), backend).await;
        let new_schema = schema(new.pool(), backend).await;
        assert!(
            old_schema.iter().any(|l| l.contains("event_search")),
            "the dump sees the schema"
        );
        let only_old: Vec<_> = old_schema.iter().filter(|l| !new_schema.contains(l)).collect();
        let only_new: Vec<_> = new_schema.iter().filter(|l| !old_schema.contains(l)).collect();
        assert!(
            only_old.is_empty() && only_new.is_empty(),
            "schemas differ\nonly old: {only_old:#?}\nonly new: {only_new:#?}"
        );
        assert_eq!(old_schema, new_schema);

        old.close().await;
        new.close().await;
        old_test_db.drop_db().await;
        new_test_db.drop_db().await;
    }
);

both_backends!(
    an_old_database_keeps_its_data_and_takes_a_new_migration,
    |backend| async move {
        let Some((test_db, old)) = old_database(backend).await else {
            return;
        };
        // A user, a room and its create event, written as the old release's schema holds them.
        let user = "@alice:weft.test";
        let room = "!upgrade:weft.test";
        let hash = weft_core::accounts::hash_password("wonderland").await.unwrap();
        let create = json!({
            "type": "m.room.create", "state_key": "", "sender": user, "room_id": room,
            "content": {"room_version": "10", "creator": user}, "origin_server_ts": 1_700_000_000_000_i64,
            "depth": 1, "prev_events": [], "auth_events": [], "hashes": {"sha256": ""}, "signatures": {},
        })
        .to_string();
        for (sql, binds) in [
            (
                "INSERT INTO users (user_id, password_hash, created_ts) VALUES ($1, $2, 1)",
                vec![user, hash.as_str()],
            ),
            (
                "INSERT INTO rooms (room_id, room_version, creator, created_ts, forward_extremities) \
             VALUES ($1, '10', $2, 1, '[\"$create\"]')",
                vec![room, user],
            ),
            (
                "INSERT INTO events (event_id, room_id, stream_pos, depth, event_type, state_key, sender, \
             origin_server_ts, json) VALUES ('$create', $1, 1, 1, 'm.room.create', '', $2, 1700000000000, $3)",
                vec![room, user, create.as_str()],
            ),
            (
                "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_pos) \
             VALUES ($1, $2, 'join', '$create', 1)",
                vec![room, user],
            ),
            ("UPDATE stream_positions SET pos = 1 WHERE stream = 'events'", vec![]),
        ] {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = query.bind(bind);
            }
            query.execute(old.pool()).await.unwrap();
        }
        old.close().await;

        // The new release migrates it at start (nothing to apply, every checksum matches) and
        // serves it: the user logs in and is in the room.
        let config = test_config(&test_db);
        let running = weft::server::start(config.clone())
            .await
            .expect("the server starts on the old database");
        let addr = running.addrs[0];
        let server = TestServer {
            db: test_db,
            config,
            running: Some(running),
            addr,
        };
        let (status, body) = server
        .client()
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wonderland"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let alice = server.client().with_token(body["access_token"].as_str().unwrap());
        let (status, body) = alice.get("/_matrix/client/v3/joined_rooms").await;
        assert_eq!((status, &body["joined_rooms"]), (200, &json!([room])), "{body}");
        let TestServer {
            db: test_db, running, ..
        } = server;
        running.unwrap().shutdown().await;

        // A new shared migration applies on top, with each dialect's integer type.
        let db = Db::connect(&test_db.url, 2).await.unwrap();
        db.migrate().await.unwrap();
        let probe = MigrationFiles {
            version: 20991231000000,
            description: "upgrade probe",
            shared: Some(
                "CREATE TABLE upgrade_probe (id BIGINT PRIMARY KEY NOT NULL, events BIGINT NOT NULL);\n\
             INSERT INTO upgrade_probe (id, events) SELECT 1, COUNT(*) FROM events;\n",
            ),
            postgres: None,
            sqlite: None,
        };
        let mut list = migrations::migrations(db.backend());
        list.push(probe.migration(db.backend()).unwrap());
        Migrator::new(Migrations(list))
            .await
            .unwrap()
            .run(db.pool())
            .await
            .unwrap();
        let (events,): (i64,) = sqlx::query_as("SELECT events FROM upgrade_probe WHERE id = 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(events, 1);
        let type_query = match backend {
            Backend::Sqlite => "SELECT type FROM pragma_table_info('upgrade_probe') WHERE name = 'events'",
            Backend::Postgres => {
                "SELECT data_type::text FROM information_schema.columns \
             WHERE table_name = 'upgrade_probe' AND column_name = 'events'"
            }
        };
        let (column_type,): (String,) = sqlx::query_as(type_query).fetch_one(db.pool()).await.unwrap();
        let expected = match backend {
            Backend::Sqlite => "INTEGER",
            Backend::Postgres => "bigint",
        };
        assert_eq!(column_type, expected);

        // The old rows are all still there.
        let (users, rooms, memberships): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users WHERE user_id = $1), (SELECT COUNT(*) FROM rooms WHERE room_id = $2), \
         (SELECT COUNT(*) FROM room_memberships WHERE room_id = $2 AND membership = 'join')",
        )
        .bind(user)
        .bind(room)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!((users, rooms, memberships), (1, 1, 1));
        let (json,): (String,) = sqlx::query_as("SELECT json FROM events WHERE event_id = '$create'")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(json, create);

        db.close().await;
        test_db.drop_db().await;
    }
);
