//! Server administration (the admin API's logic): rooms, their deletion and purge, media,
//! federation destinations.

pub mod destinations;
pub mod media;
pub mod purge;
pub mod room_delete;
pub mod rooms;

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
