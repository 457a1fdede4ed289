//! Table-level access, one module per area. Functions that take `&mut AnyConnection` run inside
//! a caller's transaction; functions that take `&Db` read from the pool.

pub mod account_data;
pub mod devices;
pub mod events;
pub mod filters;
pub mod inbound_transactions;
pub mod registration_tokens;
pub mod rooms;
pub mod server_keys;
pub mod state;
pub mod tokens;
pub mod uia;
pub mod users;

use sqlx::AnyConnection;

/// `$first, $first+1, ...`: `n` numbered placeholders for an `IN (...)` list.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Most values bound in one `IN (...)` list; lists longer than this are read in chunks.
pub const IN_CHUNK: usize = 500;

/// Lists longer than this are bound as one JSON array (see `InList`).
const SHORT_LIST: usize = 8;

/// A list of values inside `IN (...)`, bound as a statement's parameters from `$first` on
/// (the statement's last ones: how many it takes depends on the list).
///
/// A short list is bound value by value; its few shapes repeat and stay prepared. A longer one
/// is bound as one JSON array that the database unpacks (`json_array`), so that the
/// statement's text does not change with the list's length: it is parsed and planned once per
/// connection instead of on every call, which for the fifty rooms of an initial sync cost more
/// than running the statement.
pub struct InList {
    sql: String,
    json: bool,
}

impl InList {
    pub fn new(conn: &AnyConnection, first: usize, n: usize) -> InList {
        if n <= SHORT_LIST {
            return InList {
                sql: placeholders(first, n),
                json: false,
            };
        }
        InList {
            sql: json_array(crate::db::Backend::of(conn), first),
            json: true,
        }
    }

    /// What goes inside the parentheses.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values to bind, in order from `$first`.
    pub fn binds<S: AsRef<str>>(&self, values: &[S]) -> Vec<String> {
        if self.json {
            vec![json_list(values)]
        } else {
            values.iter().map(|v| v.as_ref().to_owned()).collect()
        }
    }
}

/// The values as the JSON array that `json_array` unpacks.
pub fn json_list<S: AsRef<str>>(values: &[S]) -> String {
    serde_json::Value::from(values.iter().map(AsRef::as_ref).collect::<Vec<&str>>()).to_string()
}

/// A one-column table (`value`) of the strings in the JSON array bound as `$param`.
pub fn json_array(backend: crate::db::Backend, param: usize) -> String {
    match backend {
        crate::db::Backend::Sqlite => format!("SELECT value FROM json_each(${param})"),
        crate::db::Backend::Postgres => format!("SELECT json_array_elements_text(${param}::json) AS value"),
    }
}

/// Whether a statement whose text grows with a list of `n` values is kept prepared on its
/// connection. Short lists repeat (a long-poll's few rooms, a page's few events), so their
/// statements are parsed and planned once per connection; every length of a long list would
/// be another cache entry pushing out statements that do repeat.
pub fn keep_prepared(n: usize) -> bool {
    n <= 8
}
