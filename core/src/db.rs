//! The one storage handle shared by every store module.
//!
//! Both backends are driven through sqlx's `Any` driver, so each query is written once and
//! uses `$N` placeholders, which PostgreSQL and SQLite both accept. Only migrations differ per
//! dialect (`migrations/postgres`, `migrations/sqlite`).

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyPool, Executor,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::Result;

/// Which SQL engine sits behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time, and a deferred transaction that upgrades from read to
    /// write fails with SQLITE_BUSY instead of waiting. Writers therefore queue here first.
    /// PostgreSQL needs no such lock (`None`): row locks order its writers, also across processes.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    caches: Arc<Caches>,
}

/// In-memory caches of data that never changes once written.
pub struct Caches {
    /// State groups by ID (immutable once written).
    pub state_groups: quick_cache::sync::Cache<i64, Arc<crate::events::StateMap>>,
    /// Room versions by room ID (fixed at creation).
    pub room_versions: quick_cache::sync::Cache<String, String>,
}

/// A write transaction. On SQLite it also holds the writer lock until it is dropped.
pub struct WriteTx {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Db {
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
                        // WAL lets readers run beside the writer; NORMAL sync is durable in
                        // WAL mode against process crashes, FULL also against power loss.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let sqlite_writer = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let caches = Arc::new(Caches {
            state_groups: quick_cache::sync::Cache::new(4096),
            room_versions: quick_cache::sync::Cache::new(100_000),
        });
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

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// A pooled connection for a sequence of reads.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.pool.acquire().await?)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies every pending migration of this backend's dialect.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&self.pool).await?,
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&self.pool).await?,
        }
        Ok(())
    }

    /// Starts a transaction that will write.
    pub async fn write(&self) -> Result<WriteTx> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            // Make sure no stale read snapshot is upgraded later: take the write lock now.
            // (sqlx opened a deferred transaction; a first write statement acquires it.)
            sqlx::query("UPDATE stream_positions SET pos = pos WHERE stream = ''")
                .execute(&mut *tx)
                .await?;
        }
        Ok(WriteTx { tx, _writer: writer })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
