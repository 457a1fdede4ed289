//! Table-level access, one module per area. Functions that take `&mut AnyConnection` run inside
//! a caller's transaction; functions that take `&Db` read from the pool.

pub mod account_data;
pub mod devices;
pub mod events;
pub mod filters;
pub mod registration_tokens;
pub mod rooms;
pub mod state;
pub mod tokens;
pub mod uia;
pub mod users;

/// `$first, $first+1, ...`: `n` numbered placeholders for an `IN (...)` list.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Most values bound in one `IN (...)` list; lists longer than this are read in chunks.
pub const IN_CHUNK: usize = 500;

/// Whether a statement whose text grows with a list of `n` values is kept prepared on its
/// connection. Short lists repeat (a long-poll's few rooms, a page's few events), so their
/// statements are parsed and planned once per connection; every length of a long list would
/// be another cache entry pushing out statements that do repeat.
pub fn keep_prepared(n: usize) -> bool {
    n <= 8
}
