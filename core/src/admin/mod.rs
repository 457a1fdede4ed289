//! What the admin API does, on Synapse's model: users and their devices, sessions and media,
//! server notices, event reports. The HTTP layer (`server/src/api/admin/`) only parses and
//! answers.

pub mod devices;
pub mod notices;
pub mod reports;
pub mod seen;
pub mod user_media;
pub mod users;

/// A page of a list the admin API answers: Synapse's `from`/`limit` offsets, `next_token` the
/// offset after this page while rows remain, and `total` the count of the whole list.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub from: i64,
    pub limit: i64,
    /// Newest (or last) first: Synapse's `dir=b`.
    pub backwards: bool,
}

impl Page {
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
