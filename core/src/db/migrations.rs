//! The schema, one set of migrations for both backends (the rule: migrations/README.md).
//!
//! `migrations/` holds per version a shared file (`VERSION_name.sql`), a file per dialect
//! (`VERSION_name.postgres.sql`, `VERSION_name.sqlite.sql`), or both. A backend runs the shared
//! file, with `BIGINT` read as `INTEGER` on SQLite, followed by its own file, as one migration
//! of that version; a version with neither is not one of that backend's migrations. The build
//! script (`core/build.rs`) embeds the files and checks their names.
//!
//! The versions and texts of the migrations that were once written twice
//! (`migrations/postgres`, `migrations/sqlite`) are unchanged: each backend's assembled text is
//! byte for byte its old file, so the checksums sqlx recorded in `_sqlx_migrations` still match
//! (server/tests/it/migrations.rs checks this against the old files). Like any applied
//! migration, these files are never edited.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::{
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType},
};

use super::Backend;

/// One version's files, as embedded from `migrations/`.
#[derive(Clone, Copy, Debug)]
pub struct MigrationFiles {
    pub version: i64,
    /// The name after the version, underscores read as spaces (as sqlx records it).
    pub description: &'static str,
    pub shared: Option<&'static str>,
    pub postgres: Option<&'static str>,
    pub sqlite: Option<&'static str>,
}

/// Every version in `migrations/`, in order.
pub const FILES: &[MigrationFiles] = &include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

impl MigrationFiles {
    /// The SQL `backend` runs for this version: the shared file (its `BIGINT`s as `INTEGER`
    /// on SQLite), then the backend's own file. `None` when the version has neither.
    pub fn sql(&self, backend: Backend) -> Option<String> {
        let own = match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        };
        if self.shared.is_none() && own.is_none() {
            return None;
        }
        let mut sql = match (self.shared, backend) {
            (Some(shared), Backend::Sqlite) => sqlite_types(shared),
            (Some(shared), Backend::Postgres) => shared.to_owned(),
            (None, _) => String::new(),
        };
        sql.push_str(own.unwrap_or(""));
        Some(sql)
    }

    /// This version as one of `backend`'s migrations (its checksum is the SQL's, as sqlx's).
    pub fn migration(&self, backend: Backend) -> Option<Migration> {
        Some(Migration::new(
            self.version,
            Cow::Borrowed(self.description),
            MigrationType::Simple,
            Cow::Owned(self.sql(backend)?),
            false,
        ))
    }
}

/// `backend`'s migrations, in version order.
pub fn migrations(backend: Backend) -> Vec<Migration> {
    FILES.iter().filter_map(|files| files.migration(backend)).collect()
}

/// A list of migrations as a source for `sqlx::migrate::Migrator::new` (sorted by version).
#[derive(Debug)]
pub struct Migrations(pub Vec<Migration>);

impl<'s> MigrationSource<'s> for Migrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        let mut migrations = self.0;
        migrations.sort_by_key(|m| m.version);
        Box::pin(async move { Ok(migrations) })
    }
}

/// A shared file as SQLite reads it: every word `BIGINT` (any case) becomes `INTEGER`, SQLite's
/// 64-bit integer, which also keeps `BIGINT PRIMARY KEY` an alias of the rowid.
fn sqlite_types(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while let Some(start) = rest.find(['b', 'B']) {
        let end = start + "BIGINT".len();
        let found = rest.get(start..end).is_some_and(|w| w.eq_ignore_ascii_case("BIGINT"))
            && !rest[..start].ends_with(is_word)
            && !rest[end..].starts_with(is_word);
        if found {
            out.push_str(&rest[..start]);
            out.push_str("INTEGER");
            rest = &rest[end..];
        } else {
            out.push_str(&rest[..=start]);
            rest = &rest[start + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_reads_bigint_as_integer() {
        assert_eq!(
            sqlite_types("a BIGINT, b bigint NOT NULL, bigints BIGINT_X xBIGINT (BIGINT)"),
            "a INTEGER, b INTEGER NOT NULL, bigints BIGINT_X xBIGINT (INTEGER)"
        );
    }

    #[test]
    fn a_backend_runs_the_shared_file_then_its_own() {
        let files = MigrationFiles {
            version: 1,
            description: "x",
            shared: Some("CREATE TABLE t (n BIGINT);\n"),
            postgres: None,
            sqlite: Some("CREATE INDEX t_n ON t (n);\n"),
        };
        assert_eq!(files.sql(Backend::Postgres).unwrap(), "CREATE TABLE t (n BIGINT);\n");
        assert_eq!(
            files.sql(Backend::Sqlite).unwrap(),
            "CREATE TABLE t (n INTEGER);\nCREATE INDEX t_n ON t (n);\n"
        );
        let postgres_only = MigrationFiles {
            shared: None,
            sqlite: None,
            postgres: Some("SELECT 1;"),
            ..files
        };
        assert_eq!(postgres_only.sql(Backend::Sqlite), None);
        assert_eq!(postgres_only.sql(Backend::Postgres).unwrap(), "SELECT 1;");
    }

    #[test]
    fn versions_are_ordered_and_sqlite_has_no_postgres_function() {
        assert!(FILES.windows(2).all(|w| w[0].version < w[1].version));
        let postgres = migrations(Backend::Postgres);
        let sqlite = migrations(Backend::Sqlite);
        assert_eq!(postgres.len(), FILES.len());
        assert!(
            sqlite.iter().all(|m| m.version != 20261125000012),
            "weft_require is PostgreSQL's"
        );
    }
}
