//! The write batch (`weft_core::db::batch`) on both backends, beyond what sending events
//! exercises: a batch too big for one statement is split, writes every row, and allocates
//! exactly one stream position, which every row reads.

use weft_core::{db::batch::MAX_ARGS, streams};

use crate::{both_backends, harness::TestDb};

both_backends!(a_split_batch_writes_every_row_at_one_position, |backend| async move {
    let Some(test_db) = TestDb::new(backend).await else {
        return;
    };
    let db = weft_core::Db::connect(&test_db.url, 4).await.unwrap();
    db.migrate().await.unwrap();
    let mut tx = db.write().await.unwrap();
    sqlx::query("CREATE TABLE batch_rows (x BIGINT NOT NULL, pos BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before = streams::current_pos(&db, "events").await.unwrap();

    // 100 rows per statement, past one statement's worth of parameters.
    const PER_STATEMENT: usize = 100;
    let statements = MAX_ARGS / PER_STATEMENT + 2;
    let values: Vec<String> = (1..=PER_STATEMENT).map(|i| format!("(${i}, {{pos}})")).collect();
    let sql = format!("INSERT INTO batch_rows (x, pos) VALUES {}", values.join(", "));
    let mut tx = db.write().await.unwrap();
    let mut batch = db.batch();
    for s in 0..statements {
        let mut binder = batch.push(&sql, PER_STATEMENT);
        for i in 0..PER_STATEMENT {
            binder = binder.bind((s * PER_STATEMENT + i) as i64);
        }
    }
    batch.allocate_position("events");
    let pos = batch
        .run(&mut tx)
        .await
        .unwrap()
        .expect("the batch allocates a position");
    tx.commit().await.unwrap();

    assert_eq!(pos, before + 1, "one position allocated");
    assert_eq!(streams::current_pos(&db, "events").await.unwrap(), pos);
    let rows = (statements * PER_STATEMENT) as i64;
    let (count, distinct, min_pos, max_pos): (i64, i64, i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT x), MIN(pos), MAX(pos) FROM batch_rows")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((count, distinct), (rows, rows), "every row written once");
    assert_eq!((min_pos, max_pos), (pos, pos), "every row at the allocated position");

    db.close().await;
    test_db.drop_db().await;
});

/// PostgreSQL only (`require_last` is a compare-and-set of the unlocked send path): a batch
/// whose required statement matches no row writes nothing and allocates no position, also
/// when it runs outside a transaction, where only the statement itself can undo its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_requirement_writes_nothing_outside_a_transaction() {
    let Some(test_db) = TestDb::new(crate::harness::Backend::Postgres).await else {
        return;
    };
    let db = weft_core::Db::connect(&test_db.url, 4).await.unwrap();
    db.migrate().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE batch_rows (x BIGINT NOT NULL, pos BIGINT NOT NULL);
         CREATE TABLE batch_flags (name TEXT PRIMARY KEY); INSERT INTO batch_flags VALUES ('set')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let before = streams::current_pos(&db, "events").await.unwrap();

    // The compare-and-set: the flag must be there.
    let run = |flag: &'static str| {
        let db = db.clone();
        async move {
            let mut conn = db.conn().await.unwrap();
            let mut batch = db.batch();
            batch
                .push("INSERT INTO batch_rows (x, pos) VALUES ($1, {pos})", 1)
                .bind(7_i64);
            batch
                .push("UPDATE batch_flags SET name = name WHERE name = $1 RETURNING 1", 1)
                .bind(flag);
            batch.require_last().unwrap();
            batch.allocate_position("events");
            batch.run(&mut conn).await.unwrap()
        }
    };
    let count = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM batch_rows")
            .fetch_one(db.pool())
            .await
            .unwrap();
        n
    };

    assert_eq!(run("unset").await, None, "the requirement failed");
    assert_eq!(count().await, 0, "nothing written");
    assert_eq!(
        streams::current_pos(&db, "events").await.unwrap(),
        before,
        "no position taken"
    );

    let pos = run("set").await.expect("the requirement holds");
    assert_eq!(pos, before + 1);
    assert_eq!(count().await, 1);

    db.close().await;
    test_db.drop_db().await;
}
