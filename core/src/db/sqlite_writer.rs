//! SQLite's single writer, with group commit.
//!
//! SQLite allows one writer at a time, and a deferred transaction that upgrades from read to
//! write fails with SQLITE_BUSY instead of waiting, so every write goes through one dedicated
//! connection, taken in turn through a FIFO mutex. Keeping writes on one connection also keeps
//! its page cache warm: SQLite only discards a connection's cache when *another* connection
//! changed the database.
//!
//! Group commit: each logical write transaction is a savepoint inside a physical transaction.
//! `commit` releases the savepoint, hands the connection to the next writer and waits; a
//! committer task queues on the same mutex and, when its turn comes, commits everything released
//! before it in one `COMMIT` (one WAL sync instead of one per writer). Only then do the writers'
//! `commit` calls return, so nothing is acknowledged before it is durable; a failed `COMMIT`
//! fails every writer of the batch. A writer that is dropped without committing (an error, a
//! cancelled request) is rolled back to its savepoint by whoever takes the connection next.
//!
//! A `COMMIT` waits for the disk (about a millisecond), and no writer can run meanwhile, so the
//! bigger the batches the more writes per second. When the committer's turn comes while writers
//! are still queued for the connection, it goes back behind them, up to `MAX_BATCH_WRITERS`
//! per batch: under load a batch takes in every writer that arrived before it could commit,
//! instead of only those that happened to queue before the first one released.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc,
};

use sqlx::{AnyConnection, Executor};
use tokio::sync::{watch, Mutex, Notify, OwnedMutexGuard};

use crate::{Error, Result};

/// The outcome of one physical transaction, published to its writers.
type BatchOutcome = watch::Sender<Option<std::result::Result<(), String>>>;

/// Writers a batch takes in before the committer stops letting queued writers go first.
const MAX_BATCH_WRITERS: usize = 32;

pub struct WriterConn {
    conn: AnyConnection,
    /// Physical transactions committed so far.
    commits: Arc<AtomicU64>,
    /// The open physical transaction, if any.
    batch: Option<Arc<BatchOutcome>>,
    /// Writers that have taken part in the open physical transaction.
    batch_writers: usize,
    /// A writer's savepoint that was neither released nor rolled back.
    savepoint_open: bool,
}

impl WriterConn {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// Rolls back what a dropped writer left behind. A writer cancelled while its `RELEASE`
    /// was running may have released already; then there is no savepoint to roll back to, and
    /// its work stays in the batch.
    async fn recover(&mut self) -> Result<()> {
        if self.savepoint_open {
            self.savepoint_open = false;
            if self.conn.execute("ROLLBACK TO w").await.is_ok() {
                self.conn.execute("RELEASE w").await?;
            }
        }
        Ok(())
    }

    /// Commits the open physical transaction and tells its writers.
    async fn finish_batch(&mut self) {
        let Some(batch) = self.batch.take() else { return };
        let outcome = match self.recover().await {
            Ok(()) => self.conn.execute("COMMIT").await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if outcome.is_err() {
            // Leave no half transaction behind for the next batch.
            let _ = self.conn.execute("ROLLBACK").await;
            self.savepoint_open = false;
        } else {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        batch.send_replace(Some(outcome));
    }
}

#[derive(Clone)]
pub struct SqliteWriter {
    state: Arc<Mutex<WriterConn>>,
    wake_committer: Arc<Notify>,
    commits: Arc<AtomicU64>,
    /// Writers waiting for the connection.
    queued: Arc<AtomicUsize>,
}

/// Counts a writer as queued while it waits for the connection (also if it stops waiting).
struct Queued(Arc<AtomicUsize>);

impl Queued {
    fn enter(count: &Arc<AtomicUsize>) -> Queued {
        count.fetch_add(1, Ordering::AcqRel);
        Queued(count.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SqliteWriter {
    /// Takes over `conn` (already configured) and starts the committer task.
    pub fn start(conn: AnyConnection) -> SqliteWriter {
        let commits = Arc::new(AtomicU64::new(0));
        let writer = SqliteWriter {
            state: Arc::new(Mutex::new(WriterConn {
                conn,
                commits: commits.clone(),
                batch: None,
                batch_writers: 0,
                savepoint_open: false,
            })),
            wake_committer: Arc::new(Notify::new()),
            commits,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        // The committer holds the connection weakly: it closes when the last `Db` goes away.
        let state = Arc::downgrade(&writer.state);
        let wake = writer.wake_committer.clone();
        let queued = writer.queued.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(state) = state.upgrade() else { return };
                loop {
                    // FIFO: this waits behind every writer already queued, which join the batch.
                    let mut state = state.lock().await;
                    if queued.load(Ordering::Acquire) > 0 && state.batch_writers < MAX_BATCH_WRITERS {
                        // More arrived meanwhile: let them in too, then queue again.
                        continue;
                    }
                    state.finish_batch().await;
                    break;
                }
            }
        });
        writer
    }

    /// Counts the physical transactions committed, for work that only matters after a write.
    pub fn commits(&self) -> Arc<AtomicU64> {
        self.commits.clone()
    }

    /// Starts a logical write transaction: waits for the connection, opens a physical
    /// transaction if none is open, and a savepoint for this writer.
    pub async fn begin(&self) -> Result<SqliteTx> {
        let (mut tx, savepoint) = self.begin_deferred().await?;
        if let Some(savepoint) = savepoint {
            tx.conn().execute(savepoint).await?;
        }
        Ok(tx)
    }

    /// `begin`, except that when the physical transaction is already open the savepoint is
    /// left to the caller's first statement, which must start with the returned prefix: one
    /// hand-off to the connection's worker thread fewer, which under load is mostly thread
    /// wake-ups. (The savepoint counts as open from here: if that statement fails before
    /// opening it, rolling back to it later fails harmlessly.)
    pub async fn begin_deferred(&self) -> Result<(SqliteTx, Option<&'static str>)> {
        let queued = Queued::enter(&self.queued);
        let mut state = self.state.clone().lock_owned().await;
        drop(queued);
        state.recover().await?;
        if state.batch.is_some() {
            state.batch_writers += 1;
            state.savepoint_open = true;
            let tx = SqliteTx {
                state: Some(state),
                wake_committer: self.wake_committer.clone(),
            };
            return Ok((tx, Some("SAVEPOINT w;\n")));
        }
        // One call: each is a hand-off to the connection's worker thread.
        if let Err(e) = state.conn.execute("BEGIN IMMEDIATE; SAVEPOINT w").await {
            // Leave no transaction open that no batch knows of.
            let _ = state.conn.execute("ROLLBACK").await;
            return Err(e.into());
        }
        state.batch = Some(Arc::new(watch::channel(None).0));
        state.batch_writers = 1;
        state.savepoint_open = true;
        let tx = SqliteTx {
            state: Some(state),
            wake_committer: self.wake_committer.clone(),
        };
        Ok((tx, None))
    }
}

/// One writer's turn on the connection.
pub struct SqliteTx {
    state: Option<OwnedMutexGuard<WriterConn>>,
    wake_committer: Arc<Notify>,
}

impl SqliteTx {
    /// Releases the writer's savepoint (see `released`).
    pub const RELEASE: &'static str = "RELEASE w";

    /// Records that the caller's last statement ran `RELEASE` (a failed one leaves the
    /// savepoint to be rolled back), so `commit` need not. From here the writes stay in the
    /// batch even if this writer is dropped: call `commit` right after.
    pub fn released(&mut self) {
        if let Some(state) = self.state.as_mut() {
            state.savepoint_open = false;
        }
    }

    pub fn conn(&mut self) -> &mut AnyConnection {
        self.state
            .as_mut()
            .expect("writer state is held until commit or drop")
            .conn()
    }

    pub fn conn_ref(&self) -> &AnyConnection {
        &self
            .state
            .as_ref()
            .expect("writer state is held until commit or drop")
            .conn
    }

    /// Releases this writer's savepoint and returns once the batch holding it is durable.
    pub async fn commit(mut self) -> Result<()> {
        let mut state = self.state.take().expect("writer state is held until commit or drop");
        // Woken first, so the batch is committed even if this future is dropped from here on.
        self.wake_committer.notify_one();
        let released = match state.savepoint_open {
            true => state.conn.execute(Self::RELEASE).await.map(|_| ()),
            false => Ok(()),
        };
        if released.is_ok() {
            state.savepoint_open = false;
        }
        let batch = state.batch.clone().expect("a writer always runs inside a batch");
        let mut outcome = batch.subscribe();
        // A failed RELEASE leaves the savepoint open: the committer rolls it back first.
        drop(state);
        released?;
        let done = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Internal("the SQLite committer stopped".into()))?;
        match done.as_ref() {
            Some(Err(e)) => Err(Error::Internal(format!("commit failed: {e}"))),
            _ => Ok(()),
        }
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        // Dropped without commit: the savepoint stays open until the next holder rolls it
        // back; the committer still has to commit the rest of the batch.
        if self.state.take().is_some() {
            self.wake_committer.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use crate::Db;

    async fn scratch_db() -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("weft-writer-{}", rand::random::<u64>()));
        let db = Db::connect(&format!("sqlite://{}", dir.join("t.db").display()), 4)
            .await
            .unwrap();
        let mut tx = db.write().await.unwrap();
        tx.execute("CREATE TABLE t (x INTEGER NOT NULL)").await.unwrap();
        tx.commit().await.unwrap();
        (db, dir)
    }

    async fn values(db: &Db) -> Vec<i64> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT x FROM t ORDER BY x")
            .fetch_all(db.pool())
            .await
            .unwrap();
        rows.into_iter().map(|r| r.0).collect()
    }

    async fn insert(db: &Db, x: i64, commit: bool) {
        let mut tx = db.write().await.unwrap();
        sqlx::query("INSERT INTO t (x) VALUES ($1)")
            .bind(x)
            .execute(&mut *tx)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        }
    }

    /// Concurrent writers share commits, every committed write is visible once commit returns,
    /// and a writer dropped without commit leaves nothing, also when others share its batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_keeps_committed_and_drops_abandoned_writes() {
        let (db, dir) = scratch_db().await;
        let mut tasks = Vec::new();
        for x in 0..40 {
            let db = db.clone();
            // Every fifth writer gives up without committing.
            tasks.push(tokio::spawn(async move { insert(&db, x, x % 5 != 0).await }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let expected: Vec<i64> = (0..40).filter(|x| x % 5 != 0).collect();
        assert_eq!(values(&db).await, expected);

        // A commit is visible to readers as soon as it returns, alone or after an abandoned one.
        insert(&db, 100, false).await;
        insert(&db, 101, true).await;
        assert_eq!(values(&db).await.last(), Some(&101));
        assert!(!values(&db).await.contains(&100));
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A writer whose last statement also released its savepoint commits without a `RELEASE`
    /// of its own, and the writers after it roll back and commit as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_savepoint_released_by_the_writers_last_statement_commits() {
        let (db, dir) = scratch_db().await;
        let mut tx = db.write().await.unwrap();
        let release = tx.release_sql().expect("SQLite releases in the caller's statement");
        sqlx::query(&format!("INSERT INTO t (x) VALUES (1);\n{release}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.released();
        tx.commit().await.unwrap();
        assert_eq!(values(&db).await, vec![1]);
        insert(&db, 2, false).await;
        insert(&db, 3, true).await;
        assert_eq!(values(&db).await, vec![1, 3]);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Commits never checkpoint (the writer's automatic checkpoint is off), yet committed pages
    /// reach the database file: the background checkpointer copies them while the Db is open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_is_checkpointed_in_the_background() {
        let (db, dir) = scratch_db().await;
        let file = dir.join("t.db");
        let size = || std::fs::metadata(&file).unwrap().len();
        // Let any checkpoint of the table's creation pass before measuring.
        tokio::time::sleep(super::super::CHECKPOINT_INTERVAL * 2).await;
        let before = size();
        // About 4 MiB of rows, far past the 1000 pages at which SQLite would checkpoint itself.
        for chunk in 0..40 {
            let mut tx = db.write().await.unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
                 INSERT INTO t (x) SELECT $1 * 1000 + i FROM n",
            )
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(size() > before, "database file still {} bytes after the writes", size());
        assert_eq!(values(&db).await.len(), 40_000);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
