//! The one storage handle shared by every store module.
//!
//! Both backends are driven through sqlx's `Any` driver, so each query is written once and
//! uses `$N` placeholders, which PostgreSQL and SQLite both accept. The schema is one set of
//! migrations too (`migrations/`, see `migrations`): a shared file per change, read with
//! SQLite's integer type on SQLite, plus a file per dialect only where the dialects differ.

pub mod batch;
pub mod migrations;
mod sqlite_writer;

use std::{
    str::FromStr,
    sync::{atomic::AtomicU64, Arc, Weak},
    time::{Duration, Instant},
};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyConnection, AnyPool, ConnectOptions, Executor,
};

use self::sqlite_writer::{SqliteTx, SqliteWriter};
use crate::Result;

/// Which SQL engine sits behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The engine behind a connection.
    pub fn of(conn: &AnyConnection) -> Backend {
        match conn.backend_name() {
            "PostgreSQL" => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's one writing connection, with group commit (see `sqlite_writer`). PostgreSQL
    /// needs none (`None`): row locks order its writers, also across processes.
    sqlite_writer: Option<SqliteWriter>,
    caches: Arc<Caches>,
}

/// State entries (one per piece of state) the state group cache holds at most.
const STATE_CACHE_ENTRIES: u64 = 200_000;

/// Parsed events the graph cache holds: enough for the rooms active at one time.
pub(crate) const GRAPH_EVENTS_CACHED: usize = 256;

/// In-memory caches of data that never changes once written.
pub struct Caches {
    /// State groups by ID (immutable once written).
    pub state_groups:
        quick_cache::sync::Cache<i64, crate::storage::state::CachedGroup, crate::storage::state::StateGroupWeighter>,
    /// Room versions by room ID (fixed at creation).
    pub room_versions: quick_cache::sync::Cache<String, String>,
    /// Parsed events by ID (see `events::cache`).
    pub graph_events: quick_cache::sync::Cache<String, Arc<crate::events::cache::GraphEvent>>,
}

/// A write transaction: dropped without `commit`, it is rolled back.
pub struct WriteTx {
    inner: TxInner,
    /// When it began, for the transaction-time metric.
    started: Instant,
    committed: bool,
}

enum TxInner {
    Postgres(sqlx::Transaction<'static, sqlx::Any>),
    /// Holds SQLite's writer until committed or dropped.
    Sqlite(SqliteTx),
    /// Taken by `commit`.
    Done,
}

impl WriteTx {
    fn new(inner: TxInner, asked: Instant) -> WriteTx {
        let started = Instant::now();
        crate::metrics::db_scheduled(started - asked);
        WriteTx {
            inner,
            started,
            committed: false,
        }
    }

    /// SQL that releases SQLite's savepoint, for the caller to end its last statement with
    /// (`Batch::close_with`), so that `commit` needs one hand-off to the writer's worker thread
    /// fewer; call `released` once that statement succeeded. `None` on PostgreSQL.
    pub fn release_sql(&self) -> Option<&'static str> {
        match &self.inner {
            TxInner::Postgres(_) => None,
            TxInner::Sqlite(_) => Some(SqliteTx::RELEASE),
            TxInner::Done => None,
        }
    }

    /// Records that the statement ending with `release_sql` succeeded.
    pub fn released(&mut self) {
        if let TxInner::Sqlite(tx) = &mut self.inner {
            tx.released();
        }
    }

    /// Returns once the transaction is durable.
    pub async fn commit(mut self) -> Result<()> {
        match std::mem::replace(&mut self.inner, TxInner::Done) {
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::Sqlite(tx) => tx.commit().await?,
            TxInner::Done => {}
        }
        // Only now: a failed commit counts as a rollback.
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let outcome = if self.committed { "commit" } else { "rollback" };
        crate::metrics::db_transaction(self.started.elapsed(), outcome);
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &Self::Target {
        match &self.inner {
            TxInner::Postgres(tx) => tx,
            TxInner::Sqlite(tx) => tx.conn_ref(),
            TxInner::Done => unreachable!("a committed transaction is consumed"),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.inner {
            TxInner::Postgres(tx) => tx,
            TxInner::Sqlite(tx) => tx.conn(),
            TxInner::Done => unreachable!("a committed transaction is consumed"),
        }
    }
}

impl Db {
    /// The pool size used when the configuration names none. PostgreSQL serves each connection
    /// with its own backend process and gains from more of them; a SQLite pool only reads (writes
    /// have their own connection), readers beyond a couple per core add no throughput, and each
    /// keeps its own page cache and prepared statements (about 2 MiB apiece under load).
    pub fn default_max_connections(url: &str) -> u32 {
        if url.starts_with("sqlite:") {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            u32::try_from(cores * 2).unwrap_or(u32::MAX).clamp(4, 16)
        } else {
            16
        }
    }

    /// Connects to `sqlite://path` (created when missing) or `postgres://...`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(crate::Error::Config(format!(
                "database.url must start with sqlite:// or postgres://, got {url:?}"
            )));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url_with_create(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        configure_sqlite(conn).await?;
                        // A reader's page cache is discarded whenever the writer commits, so a
                        // big one buys little under load; 512 KiB instead of 2 MiB per pooled
                        // connection keeps a busy pool's memory small.
                        conn.execute("PRAGMA cache_size = -512").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let sqlite_writer = match backend {
            Backend::Sqlite => {
                let mut conn = options.connect().await?;
                configure_sqlite(&mut conn).await?;
                // Checkpoints run beside the writer (see `start_checkpointer`), not inside the
                // commit that happens to cross the WAL's size limit.
                conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                Some(SqliteWriter::start(conn))
            }
            Backend::Postgres => None,
        };
        let caches = Arc::new(Caches {
            // Weighed by entries: about 40 MiB at most, however big the rooms.
            state_groups: quick_cache::sync::Cache::with_weighter(
                4096,
                STATE_CACHE_ENTRIES,
                crate::storage::state::StateGroupWeighter,
            ),
            room_versions: quick_cache::sync::Cache::new(100_000),
            // The hot set is each active room's last event and its auth events; every sent event
            // passes through, so a bigger cache mostly holds finished messages (a few KiB each).
            graph_events: crate::events::cache::new_cache(GRAPH_EVENTS_CACHED),
        });
        if let Some(writer) = &sqlite_writer {
            start_checkpointer(pool.clone(), writer.commits(), Arc::downgrade(&caches));
        }
        Ok(Db {
            pool,
            backend,
            sqlite_writer,
            caches,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// An empty batch of writes for this backend (see `batch`).
    pub fn batch<'q>(&self) -> batch::Batch<'q> {
        batch::Batch::new(self.backend)
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// A pooled connection for a sequence of reads.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        let asked = Instant::now();
        let conn = self.pool.acquire().await?;
        crate::metrics::db_scheduled(asked.elapsed());
        Ok(conn)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies every pending migration of this backend (see `migrations`), after checking
    /// that those already applied are unchanged.
    pub async fn migrate(&self) -> Result<()> {
        let source = migrations::Migrations(migrations::migrations(self.backend));
        sqlx::migrate::Migrator::new(source).await?.run(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction that will write.
    pub async fn write(&self) -> Result<WriteTx> {
        let asked = Instant::now();
        let inner = match &self.sqlite_writer {
            Some(writer) => TxInner::Sqlite(writer.begin().await?),
            None => TxInner::Postgres(self.pool.begin().await?),
        };
        Ok(WriteTx::new(inner, asked))
    }

    /// `write`, possibly leaving SQLite's savepoint to the caller's first statement, which
    /// must then start with the returned prefix (see `SqliteWriter::begin_deferred`).
    pub async fn write_deferred(&self) -> Result<(WriteTx, &'static str)> {
        let asked = Instant::now();
        let (inner, prefix) = match &self.sqlite_writer {
            Some(writer) => {
                let (tx, prefix) = writer.begin_deferred().await?;
                (TxInner::Sqlite(tx), prefix.unwrap_or(""))
            }
            None => (TxInner::Postgres(self.pool.begin().await?), ""),
        };
        Ok((WriteTx::new(inner, asked), prefix))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How often SQLite's write-ahead log is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Checkpoints the WAL from a pooled connection every `CHECKPOINT_INTERVAL` in which something
/// was committed (an idle server does nothing), for as long as a `Db` sharing `alive` exists.
/// SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages, so every
/// few hundred events one writer's commit (and every write batched with it) waited for the
/// copy and a sync of the database file: the 10–30 ms spikes of a write path's tail. A passive checkpoint here copies what no reader still needs while
/// the writer goes on appending; commits stay durable by the WAL's own sync.
fn start_checkpointer(pool: AnyPool, commits: Arc<AtomicU64>, alive: Weak<Caches>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpointed_at = 0;
        loop {
            tick.tick().await;
            if alive.strong_count() == 0 || pool.is_closed() {
                return;
            }
            let committed = commits.load(std::sync::atomic::Ordering::Relaxed);
            if committed == checkpointed_at {
                continue;
            }
            checkpointed_at = committed;
            if let Err(e) = pool.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
                tracing::debug!("WAL checkpoint: {e}");
            }
        }
    });
}

async fn configure_sqlite(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    // WAL lets readers run beside the writer; FULL sync makes each commit durable also against
    // power loss (group commit keeps that affordable).
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA synchronous = FULL").await?;
    conn.execute("PRAGMA busy_timeout = 30000").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    // Temp b-trees stay in memory rather than in temp files. No mmap: mapped database pages
    // would count as the server's own memory, where read(2) leaves them to the kernel's cache.
    conn.execute("PRAGMA temp_store = MEMORY").await?;
    Ok(())
}

fn sqlite_url_with_create(url: &str) -> Result<String> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(crate::Error::Config("database.url: SQLite needs a file path".into()));
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| crate::Error::Config(format!("cannot create database directory {parent:?}: {e}")))?;
        }
    }
    Ok(if url.contains('?') {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    })
}
