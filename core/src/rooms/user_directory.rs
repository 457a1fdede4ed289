//! The user directory (`POST /user_directory/search`): users who share a room with the
//! searcher, plus members of public (joinable or world-readable) rooms, this server's and
//! other servers' alike, matched by word prefixes of their user ID's localpart or display name.
//! Deactivated users never appear.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::AnyConnection;

use crate::{storage::InList, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub user_id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// The most results one search returns, whatever the client asks for.
pub const MAX_LIMIT: usize = 100;

/// Lowercased alphanumeric words.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether every word of the term starts a word of the localpart or display name; a term
/// starting with `@` may also be a prefix of the full user ID.
fn matches(term: &str, user: &DirectoryUser) -> bool {
    let term = term.trim().to_lowercase();
    if term.starts_with('@') && user.user_id.to_lowercase().starts_with(&term) {
        return true;
    }
    let wanted = words(&term);
    if wanted.is_empty() {
        return false;
    }
    let localpart = user
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default();
    let mut have = words(localpart);
    have.push(localpart.to_lowercase());
    have.extend(user.display_name.as_deref().map(words).unwrap_or_default());
    wanted.iter().all(|w| have.iter().any(|h| h.starts_with(w.as_str())))
}

/// Rooms public in the user directory's sense (Synapse's): anyone may join them (join rule
/// `public`) or read them (history visibility `world_readable`).
async fn public_rooms(conn: &mut AnyConnection) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT cs.room_id, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
         WHERE cs.state_key = '' AND cs.event_type IN ('m.room.join_rules', 'm.room.history_visibility')",
    )
    .fetch_all(conn)
    .await?;
    let mut rooms: Vec<String> = rows
        .into_iter()
        .filter(|(_, json)| {
            serde_json::from_str::<Value>(json).is_ok_and(|j| {
                j["content"]["join_rule"] == "public" || j["content"]["history_visibility"] == "world_readable"
            })
        })
        .map(|(room, _)| room)
        .collect();
    rooms.sort();
    rooms.dedup();
    Ok(rooms)
}

/// Candidates: joined members of rooms the searcher is joined to or that are public (or
/// listed in the room directory), and whether they share a room with the searcher. A local
/// user's profile is their global one; another server's user's is the one their latest
/// membership event here carries (each profile change is a new member event, so the
/// directory follows it). The searcher is left out: nobody looks themselves up.
async fn candidates(conn: &mut AnyConnection, searcher: &str) -> Result<Vec<(DirectoryUser, bool)>> {
    let public = public_rooms(conn).await?;
    let list = InList::new(conn, 2, public.len());
    let public_cond = if public.is_empty() {
        String::new()
    } else {
        format!(" OR m.room_id IN ({})", list.sql())
    };
    let sql = format!(
        "SELECT m.user_id, u.user_id, u.displayname, u.avatar_url, m.displayname, m.avatar_url, m.stream_pos,
                CAST(CASE WHEN mine.user_id IS NULL THEN 0 ELSE 1 END AS BIGINT)
         FROM room_memberships m
         JOIN rooms r ON r.room_id = m.room_id
         LEFT JOIN users u ON u.user_id = m.user_id
         LEFT JOIN room_memberships mine ON mine.room_id = m.room_id AND mine.user_id = $1 AND mine.membership = 'join'
         WHERE m.membership = 'join' AND m.user_id <> $1 AND (u.deactivated IS NULL OR u.deactivated = 0)
           AND (mine.user_id IS NOT NULL OR r.is_public = 1{public_cond})"
    );
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        i64,
    );
    let mut query = sqlx::query_as::<_, Row>(&sql).bind(searcher);
    for value in list.binds(&public) {
        query = query.bind(value);
    }
    let rows = query.fetch_all(conn).await?;
    // One entry per user: shared if any room is, with the profile of the latest membership.
    let mut by_user: BTreeMap<String, (DirectoryUser, bool, i64)> = BTreeMap::new();
    for (user_id, local, name, avatar, member_name, member_avatar, pos, shared) in rows {
        let (display_name, avatar_url) = match local {
            Some(_) => (name, avatar),
            None => (member_name, member_avatar),
        };
        let entry = by_user.entry(user_id.clone()).or_insert_with(|| {
            (
                DirectoryUser {
                    user_id,
                    display_name: None,
                    avatar_url: None,
                },
                false,
                i64::MIN,
            )
        });
        entry.1 |= shared != 0;
        if pos > entry.2 {
            entry.2 = pos;
            entry.0.display_name = display_name;
            entry.0.avatar_url = avatar_url;
        }
    }
    Ok(by_user.into_values().map(|(user, shared, _)| (user, shared)).collect())
}

/// Searches the directory; returns up to `limit` users and whether more matched. Users who
/// share a room with the searcher come first.
pub async fn search(
    conn: &mut AnyConnection,
    searcher: &str,
    term: &str,
    limit: usize,
) -> Result<(Vec<DirectoryUser>, bool)> {
    let limit = limit.min(MAX_LIMIT);
    let mut found: Vec<(DirectoryUser, bool)> = candidates(conn, searcher)
        .await?
        .into_iter()
        .filter(|(u, _)| matches(term, u))
        .collect();
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.user_id.cmp(&b.0.user_id)));
    let limited = found.len() > limit;
    Ok((found.into_iter().take(limit).map(|(u, _)| u).collect(), limited))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: Option<&str>) -> DirectoryUser {
        DirectoryUser {
            user_id: id.into(),
            display_name: name.map(Into::into),
            avatar_url: None,
        }
    }

    #[test]
    fn prefix_of_words() {
        let u = user("@alice.smith:example.org", Some("Alice Wonderland"));
        assert!(matches("ali", &u));
        assert!(matches("WONDER", &u));
        assert!(matches("smi", &u));
        assert!(matches("alice won", &u));
        assert!(matches("@alice.sm", &u));
        assert!(!matches("land", &u));
        assert!(!matches("example", &u));
        assert!(!matches("", &u));
        assert!(!matches("bob", &u));
    }
}
