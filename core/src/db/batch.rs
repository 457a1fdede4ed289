//! Write statements sent to the database together, in one round trip.
//!
//! Persisting an event ends in a dozen writes whose results nobody reads (the event row, its
//! edges, extremities, current state, memberships, notifications, the room's head). Sent one
//! by one, each is a round trip to PostgreSQL or a hand-off to SQLite's worker thread, and on
//! both they run while the room (and, from the stream position on, the whole stream) is
//! locked. A `Batch` collects them and sends them as one statement:
//!
//! - SQLite runs a multi-statement query in one call, in order.
//! - PostgreSQL runs them as the arms of one `WITH` statement (data-modifying CTEs).
//!
//! PostgreSQL runs all arms against one snapshot, so the statements of a batch must be
//! independent: none may read what another writes, and no row may be written twice.
//!
//! A batch may also allocate the next position of a stream (see `streams`): statements refer
//! to it as `{pos}`, and `run` returns it. It is allocated in the same statement as the
//! writes, so on PostgreSQL the stream's row lock is held only from that statement to COMMIT.

use sqlx::{any::AnyArguments, AnyConnection, Arguments, Encode, Type};

use super::Backend;
use crate::{Error, Result};

/// The SQLSTATE of a failed `require_last` (raised by `weft_require`, see
/// migrations/20261125000012_require_function.postgres.sql).
const REQUIRED_MISSING: &str = "WH001";

/// Bind parameters per statement sent; both backends allow more (PostgreSQL 65535, SQLite
/// 32766), and a bigger batch is split into several.
pub const MAX_ARGS: usize = 16_000;

/// One statement sent to the database: SQL pieces and their arguments.
#[derive(Default)]
struct Segment<'q> {
    statements: Vec<String>,
    args: AnyArguments<'q>,
}

pub struct Batch<'q> {
    backend: Backend,
    /// Full segments first; the last one is being filled.
    segments: Vec<Segment<'q>>,
    position: Option<String>,
    /// The statement (its index in the first segment) that must return a row for the batch
    /// to count, see `require_last`.
    required: Option<usize>,
    /// A statement the last segment ends with, see `close_with`.
    closing: Option<&'static str>,
}

/// Adds arguments to the statement just pushed, in the order of its `$1`, `$2`, ...
pub struct Binder<'b, 'q> {
    args: &'b mut AnyArguments<'q>,
}

impl<'q> Binder<'_, 'q> {
    pub fn bind<T: 'q + Encode<'q, sqlx::Any> + Type<sqlx::Any>>(self, value: T) -> Self {
        // Encoding into the Any driver's buffer only copies the value; it cannot fail.
        self.args.add(value).expect("Any arguments accept every supported type");
        self
    }
}

impl<'q> Batch<'q> {
    pub fn new(backend: Backend) -> Self {
        Batch {
            backend,
            segments: vec![Segment::default()],
            position: None,
            required: None,
            closing: None,
        }
    }

    /// Ends the batch's last call with `sql` (SQLite only; see `WriteTx::release_sql`).
    pub fn close_with(&mut self, sql: &'static str) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(Error::Internal(
                "only SQLite runs statements after a batch's writes".into(),
            ));
        }
        self.closing = Some(sql);
        Ok(())
    }

    /// Makes the statement just pushed (PostgreSQL only, one with `RETURNING`, in the first
    /// segment) a condition of the batch: when it returns no row, the first segment's
    /// statement fails as a whole (nothing of it is written, also outside a transaction),
    /// and `run` returns `None`. A compare-and-set of a row the batch did not lock beforehand.
    pub fn require_last(&mut self) -> Result<()> {
        let first = &self.segments[0];
        if self.backend != Backend::Postgres || self.segments.len() > 1 || first.statements.is_empty() {
            return Err(Error::Internal(
                "a required statement must be the first segment's, on PostgreSQL".into(),
            ));
        }
        self.required = Some(first.statements.len() - 1);
        Ok(())
    }

    /// Allocates the next position of `stream` when the batch runs; `{pos}` in statements
    /// stands for it.
    pub fn allocate_position(&mut self, stream: &str) {
        self.position = Some(stream.to_owned());
    }

    /// Whether the batch goes to the database as one statement, which is atomic on its own.
    pub fn is_one_statement(&self) -> bool {
        self.segments.len() == 1
    }

    /// Adds a statement using `params` bind parameters `$1..$params`, bound next through the
    /// returned binder.
    pub fn push(&mut self, sql: &str, params: usize) -> Binder<'_, 'q> {
        let full = self
            .segments
            .last()
            .is_some_and(|s| !s.statements.is_empty() && s.args.len() + params > MAX_ARGS);
        if full {
            self.segments.push(Segment::default());
        }
        let segment = self.segments.last_mut().expect("a batch always has a segment");
        let sql = renumber(sql, segment.args.len());
        segment.statements.push(sql);
        Binder {
            args: &mut segment.args,
        }
    }

    /// Runs every statement in order, inside the caller's transaction; returns the allocated
    /// position, if one was asked for. A batch too big for one statement is sent as several;
    /// the first allocates the position and the later ones read it back.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<Option<i64>> {
        let Batch {
            backend,
            segments,
            position,
            required,
            closing,
        } = self;
        let mut allocated = None;
        let last = segments.len() - 1;
        for (i, mut segment) in segments.into_iter().enumerate() {
            let allocate = i == 0 && position.is_some();
            let uses_pos = allocate || segment.statements.iter().any(|s| s.contains("{pos}"));
            let closes = closing.filter(|_| i == last);
            if segment.statements.is_empty() && !allocate && closes.is_none() {
                continue;
            }
            let stream_param = match (&position, uses_pos) {
                (Some(stream), true) => {
                    segment.args.add(stream.clone()).map_err(Error::internal)?;
                    Some(segment.args.len())
                }
                _ => None,
            };
            let required = required.filter(|_| i == 0);
            let sql = match (segment.statements.len(), stream_param, required) {
                (1, None, None) => segment.statements.pop().expect("one statement"),
                _ => render(backend, &segment.statements, stream_param, allocate, required),
            };
            // After the position's SELECT, so that its row stays the last one returned.
            let sql = match closes {
                Some(closing) if sql.is_empty() => closing.to_owned(),
                Some(closing) => format!("{sql};\n{closing}"),
                None => sql,
            };
            let rows: Vec<(i64,)> = match sqlx::query_as_with(&sql, segment.args).fetch_all(&mut *conn).await {
                Err(sqlx::Error::Database(e))
                    if required.is_some() && e.code().as_deref() == Some(REQUIRED_MISSING) =>
                {
                    return Ok(None)
                }
                other => other?,
            };
            if required.is_some() && rows.is_empty() {
                return Ok(None);
            }
            if allocate {
                let (pos,) = rows
                    .last()
                    .copied()
                    .ok_or_else(|| Error::Internal(format!("stream {position:?} has no position row")))?;
                allocated = Some(pos);
            }
        }
        Ok(allocated)
    }
}

/// Shifts every `$N` in `sql` by `offset`.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n: usize = rest[..digits].parse().expect("ASCII digits parse");
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// One statement of the backend's kind for `statements`. With `stream`, the parameter naming
/// the stream, `{pos}` reads its position; with `allocate` too, the statement first bumps it
/// and returns it as its one row. With `required` (PostgreSQL), it returns a row only when
/// that statement returned one.
fn render(
    backend: Backend,
    statements: &[String],
    stream: Option<usize>,
    allocate: bool,
    required: Option<usize>,
) -> String {
    let read = stream.map(|p| format!("(SELECT pos FROM stream_positions WHERE stream = ${p})"));
    let bump = stream.map(|p| format!("UPDATE stream_positions SET pos = pos + 1 WHERE stream = ${p}"));
    let with_pos = |s: &String, pos: Option<&str>| match pos {
        Some(pos) => s.replace("{pos}", pos),
        None => s.clone(),
    };
    match backend {
        Backend::Sqlite => {
            // Statements run in order: the position is bumped first, then read where needed.
            let mut parts = Vec::with_capacity(statements.len() + 2);
            if allocate {
                parts.extend(bump);
            }
            parts.extend(statements.iter().map(|s| with_pos(s, read.as_deref())));
            if let (true, Some(read)) = (allocate, &read) {
                parts.push(format!("SELECT {read}"));
            }
            parts.join(";\n")
        }
        Backend::Postgres => {
            // All arms see one snapshot: they read the bumped position from the bumping arm.
            let mut arms = Vec::with_capacity(statements.len() + 1);
            let pos = match (allocate, &bump) {
                (true, Some(bump)) => {
                    arms.push(format!("next_pos AS ({bump} RETURNING pos)"));
                    Some("(SELECT pos FROM next_pos)")
                }
                _ => read.as_deref(),
            };
            for (i, s) in statements.iter().enumerate() {
                arms.push(format!("w{i} AS ({})", with_pos(s, pos)));
            }
            let result = match (allocate, required) {
                (true, None) => "SELECT pos FROM next_pos".to_owned(),
                // Fails the statement, and with it every arm's writes (see the migration).
                (true, Some(r)) => format!("SELECT pos FROM next_pos WHERE weft_require(EXISTS (SELECT 1 FROM w{r}))"),
                (false, Some(r)) => format!("SELECT 0::BIGINT WHERE weft_require(EXISTS (SELECT 1 FROM w{r}))"),
                (false, None) => "SELECT 0::BIGINT WHERE false".to_owned(),
            };
            format!("WITH {} {result}", arms.join(",\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumber_shifts_every_placeholder() {
        assert_eq!(renumber("SELECT $1, $2, $10", 0), "SELECT $1, $2, $10");
        assert_eq!(renumber("VALUES ($1, $2, $10) -- $", 5), "VALUES ($6, $7, $15) -- $");
    }

    #[test]
    fn render_puts_the_position_first_and_returns_it() {
        let statements = vec!["INSERT INTO t (a, p) VALUES ($1, {pos})".to_owned()];
        let sqlite = render(Backend::Sqlite, &statements, Some(2), true, None);
        assert_eq!(
            sqlite,
            "UPDATE stream_positions SET pos = pos + 1 WHERE stream = $2;\n\
             INSERT INTO t (a, p) VALUES ($1, (SELECT pos FROM stream_positions WHERE stream = $2));\n\
             SELECT (SELECT pos FROM stream_positions WHERE stream = $2)"
        );
        let pg = render(Backend::Postgres, &statements, Some(2), true, None);
        assert!(pg.starts_with("WITH next_pos AS (UPDATE stream_positions"), "{pg}");
        assert!(
            pg.contains("w0 AS (INSERT INTO t (a, p) VALUES ($1, (SELECT pos FROM next_pos)))"),
            "{pg}"
        );
        assert!(pg.ends_with("SELECT pos FROM next_pos"), "{pg}");
    }
}
