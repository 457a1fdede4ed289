//! Server administration (the admin API's logic, on Synapse's model): users and their
//! devices, sessions and media, server notices, event reports; rooms, their deletion and purge,
//! media, federation destinations. The HTTP layer (`server/src/api/admin/`) only parses and
//! answers.

pub mod destinations;
pub mod devices;
pub mod media;
pub mod notices;
pub mod purge;
pub mod reports;
pub mod room_delete;
pub mod rooms;
pub mod seen;
pub mod user_media;
pub mod users;

use crate::{Error, Result};

/// Offset pagination as Synapse's admin API has it: `from` (an offset) and `limit`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub from: usize,
    pub limit: usize,
}

impl Page {
    /// Checks the query's values (`limit` defaults to `default_limit`).
    pub fn new(from: Option<i64>, limit: Option<i64>, default_limit: usize) -> Result<Page> {
        let from = from.unwrap_or(0);
        let limit = limit.map_or(default_limit as i64, |l| l);
        if from < 0 {
            return Err(Error::InvalidParam(
                "Query parameter from must be a string representing a positive integer.".into(),
            ));
        }
        if limit < 0 {
            return Err(Error::InvalidParam(
                "Query parameter limit must be a string representing a positive integer.".into(),
            ));
        }
        Ok(Page {
            from: from as usize,
            limit: limit as usize,
        })
    }

    /// This page of `all`, and the offset of the next page when there is one.
    pub fn slice<T>(&self, all: Vec<T>) -> (Vec<T>, Option<usize>) {
        let total = all.len();
        let items: Vec<T> = all.into_iter().skip(self.from).take(self.limit).collect();
        let end = self.from + items.len();
        (items, (end < total).then_some(end))
    }
}

/// A sort direction: `f` (forwards, the default) or `b`.
pub fn parse_dir(dir: Option<&str>) -> Result<bool> {
    match dir {
        None | Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(Error::InvalidParam("Unknown direction: use 'f' or 'b'".into())),
    }
}

/// A page of a list read with SQL (`LIMIT`/`OFFSET`) that the admin API answers: Synapse's `from`/`limit` offsets, `next_token` the
/// offset after this page while rows remain, and `total` the count of the whole list.
#[derive(Clone, Copy, Debug)]
pub struct SqlPage {
    pub from: i64,
    pub limit: i64,
    /// Newest (or last) first: Synapse's `dir=b`.
    pub backwards: bool,
}

impl SqlPage {
    pub fn next_token(&self, returned: usize, total: i64) -> Option<String> {
        let after = self.from + returned as i64;
        (returned > 0 && after < total).then(|| after.to_string())
    }

    pub fn dir(&self) -> &'static str {
        if self.backwards {
            "DESC"
        } else {
            "ASC"
        }
    }
}

/// `%`, `_` and the escape itself taken literally in a `LIKE ... ESCAPE '\'` pattern that
/// matches `needle` anywhere, case-insensitively against a `LOWER(...)` column.
pub fn contains_pattern(needle: &str) -> String {
    let mut out = String::from("%");
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
