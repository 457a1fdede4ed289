//! Auth chains: every event reachable through `auth_events`, read from the `event_auth` index
//! without loading event JSON.

use std::collections::HashSet;

use sqlx::AnyConnection;

use crate::Result;

/// The auth chain of `start` (the start events themselves excluded unless reachable).
pub async fn auth_chain(conn: &mut AnyConnection, start: impl IntoIterator<Item = String>) -> Result<HashSet<String>> {
    let mut seen = HashSet::new();
    let mut frontier: Vec<String> = start.into_iter().collect();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT auth_event_id FROM event_auth WHERE event_id IN ({})",
                placeholders.join(",")
            );
            let mut q = sqlx::query_as::<_, (String,)>(&sql).persistent(false);
            for id in chunk {
                q = q.bind(id);
            }
            for (id,) in q.fetch_all(&mut *conn).await? {
                if seen.insert(id.clone()) {
                    next.push(id);
                }
            }
        }
        frontier = next;
    }
    Ok(seen)
}
