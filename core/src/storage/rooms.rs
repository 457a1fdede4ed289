//! Rooms, their current state (indexed), memberships and aliases.

use sqlx::AnyConnection;

use crate::{
    db::{batch::Batch, Backend},
    events::StateMap,
    util::now_ms,
    Db, Error, Result,
};

pub async fn insert(conn: &mut AnyConnection, room_id: &str, version: &str, creator: &str) -> Result<()> {
    sqlx::query("INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)")
        .bind(room_id)
        .bind(version)
        .bind(creator)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// Where a room's next event goes: its current state group and forward extremities.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub current_group: Option<i64>,
    /// Sorted event IDs.
    pub extremities: Vec<String>,
    /// The joined members as push evaluation needs them, when read with the lock.
    pub push_members: Option<Vec<PushMember>>,
}

/// A joined member: user ID, display name, stored push rules.
pub type PushMember = (String, Option<String>, Option<String>);

impl Head {
    /// Takes `other`'s members if they were read at this head's state group (memberships
    /// follow current state, so members read at another group may be stale).
    pub fn members_from(&mut self, other: &Head) {
        if other.current_group == self.current_group {
            self.push_members = other.push_members.clone();
        }
    }

    fn from_row(current_group: Option<i64>, extremities: &str) -> Result<Head> {
        Ok(Head {
            current_group,
            extremities: serde_json::from_str(extremities).map_err(Error::internal)?,
            push_members: None,
        })
    }
}

/// PostgreSQL's error code when a `NOWAIT` lock finds the row locked.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

/// A room row locked for the rest of the transaction.
pub struct Locked {
    /// The room's head, read with the lock (it cannot change while held).
    pub head: Head,
    /// The event already sent with the transaction ID given to `lock_for_send`, if any. On
    /// PostgreSQL it is read as of before the lock was granted, so a retry racing its first
    /// attempt may miss it; the unique index on transaction IDs then refuses the second insert.
    pub txn_event: Option<String>,
}

/// Locks the room row for the rest of the transaction, serialising event creation per room
/// (also across processes on PostgreSQL). `None` when the room does not exist.
///
/// The head comes from the locked row itself, which on PostgreSQL is the newest committed
/// version even when the lock had to wait for another writer.
pub async fn lock(conn: &mut AnyConnection, room_id: &str) -> Result<Option<Head>> {
    let row: Option<(Option<i64>, String)> = sqlx::query_as(
        "UPDATE rooms SET last_stream_pos = last_stream_pos WHERE room_id = $1
         RETURNING current_state_group, forward_extremities",
    )
    .bind(room_id)
    .fetch_optional(conn)
    .await?;
    row.map(|(group, extremities)| Head::from_row(group, &extremities))
        .transpose()
}

/// `lock` for sending one event (or, without `lock`, a plain read of the same), returning in
/// the same round trip what the send reads next: the event of a retried transaction ID and,
/// when `push_members`, the joined members.
///
/// Subqueries read the snapshot taken when the statement started. On PostgreSQL that may be
/// before the lock was granted; the members are kept only when the snapshot's current state
/// group is the locked row's, since memberships follow current state.
///
/// `prefix` is SQL run first in the same call (see `Db::write_deferred`).
#[allow(clippy::too_many_arguments)]
pub async fn lock_for_send(
    db: &Db,
    conn: &mut AnyConnection,
    room_id: &str,
    txn: Option<(&str, &str, &str)>,
    push_members: bool,
    lock: bool,
    prefix: &str,
) -> Result<Option<Locked>> {
    let members = match (push_members, db.backend()) {
        (false, _) => "NULL",
        (true, Backend::Postgres) => {
            "(SELECT CAST(json_agg(json_build_array(m.user_id, m.displayname, p.ruleset)) AS TEXT)
              FROM room_memberships m LEFT JOIN push_rules p ON p.user_id = m.user_id
              WHERE m.room_id = $1 AND m.membership = 'join')"
        }
        (true, Backend::Sqlite) => {
            "(SELECT json_group_array(json_array(m.user_id, m.displayname, p.ruleset))
              FROM room_memberships m LEFT JOIN push_rules p ON p.user_id = m.user_id
              WHERE m.room_id = $1 AND m.membership = 'join')"
        }
    };
    type Row = (Option<i64>, String, Option<String>, Option<i64>, Option<String>);
    let columns = format!(
        "current_state_group, forward_extremities,
         (SELECT event_id FROM events
          WHERE txn_user = $2 AND txn_device = $3 AND txn_id = $4 AND events.room_id = $1),
         (SELECT r.current_state_group FROM rooms r WHERE r.room_id = $1),
         {members}"
    );
    let sql = if lock {
        format!("{prefix}UPDATE rooms SET last_stream_pos = last_stream_pos WHERE room_id = $1 RETURNING {columns}")
    } else {
        format!("{prefix}SELECT {columns} FROM rooms WHERE room_id = $1")
    };
    // All rows, not the first result's: with a prefix, the first statement returns none.
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(room_id)
        .bind(txn.map(|t| t.0))
        .bind(txn.map(|t| t.1))
        .bind(txn.map(|t| t.2))
        .fetch_all(conn)
        .await?;
    let row = rows.into_iter().next();
    let Some((group, extremities, txn_event, seen_group, members)) = row else {
        return Ok(None);
    };
    let mut head = Head::from_row(group, &extremities)?;
    if push_members && seen_group == group {
        head.push_members = Some(match members {
            Some(json) => serde_json::from_str(&json).map_err(Error::internal)?,
            None => Vec::new(),
        });
    }
    Ok(Some(Locked { head, txn_event }))
}

/// The room's head as committed (exact under the room's lock). Empty for an unknown room.
pub async fn head(conn: &mut AnyConnection, room_id: &str) -> Result<Head> {
    let row: Option<(Option<i64>, String)> =
        sqlx::query_as("SELECT current_state_group, forward_extremities FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(conn)
            .await?;
    match row {
        Some((group, extremities)) => Head::from_row(group, &extremities),
        None => Ok(Head::default()),
    }
}

pub async fn version(db: &Db, conn: &mut AnyConnection, room_id: &str) -> Result<Option<String>> {
    if let Some(v) = db.caches().room_versions.get(room_id) {
        return Ok(Some(v));
    }
    let row: Option<(String,)> = sqlx::query_as("SELECT room_version FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    if let Some((v,)) = &row {
        db.caches().room_versions.insert(room_id.to_owned(), v.clone());
    }
    Ok(row.map(|r| r.0))
}

pub async fn current_state_group(conn: &mut AnyConnection, room_id: &str) -> Result<Option<i64>> {
    let row: Option<(Option<i64>,)> = sqlx::query_as("SELECT current_state_group FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.and_then(|r| r.0))
}

/// Records a new event at the head of the room: the batch's stream position, the room's
/// forward extremities and (when known) the current state group.
///
/// With `expected`, the head this event was built on without locking the room (PostgreSQL),
/// the update is a compare-and-set the batch requires: if the room moved meanwhile, nothing
/// of the batch counts (see `Batch::require_last`). It does not wait for the room's row: the
/// batch may already hold the stream's row, which a sender holding the room's row waits for,
/// so waiting could deadlock; a locked row fails the batch instead (`LOCK_NOT_AVAILABLE`).
pub fn set_head<'q>(
    batch: &mut Batch<'q>,
    room_id: &'q str,
    group: Option<i64>,
    extremities: &[String],
    expected: Option<&Head>,
) -> Result<()> {
    let json = |list: &[String]| serde_json::to_string(list).expect("a list of strings serialises");
    let set = "UPDATE rooms SET current_state_group = COALESCE($2, current_state_group), forward_extremities = $3,
               last_stream_pos = {pos}
               WHERE room_id = $1";
    match expected {
        None => {
            batch.push(set, 3).bind(room_id).bind(group).bind(json(extremities));
        }
        Some(head) => {
            batch
                .push(
                    &format!(
                        "{set} AND forward_extremities = $4 AND current_state_group IS NOT DISTINCT FROM $5
                         AND EXISTS (SELECT 1 FROM rooms r WHERE r.room_id = $1 FOR UPDATE NOWAIT)
                         RETURNING last_stream_pos"
                    ),
                    5,
                )
                .bind(room_id)
                .bind(group)
                .bind(json(extremities))
                .bind(json(&head.extremities))
                .bind(head.current_group);
            batch.require_last()?;
        }
    }
    Ok(())
}

/// Applies the difference between two current states to the `current_state` table.
pub fn apply_current_state_delta<'q>(batch: &mut Batch<'q>, room_id: &'q str, old: &StateMap, new: &StateMap) {
    for (key, event_id) in super::state::diff(old, new) {
        match event_id {
            None => {
                batch
                    .push(
                        "DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
                        3,
                    )
                    .bind(room_id)
                    .bind(key.0.clone())
                    .bind(key.1.clone());
            }
            Some(event_id) => {
                batch
                    .push(
                        "INSERT INTO current_state (room_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id",
                        4,
                    )
                    .bind(room_id)
                    .bind(key.0.clone())
                    .bind(key.1.clone())
                    .bind(event_id.clone());
            }
        }
    }
}

/// The event ID of one piece of current state.
pub async fn current_state_event(
    conn: &mut AnyConnection,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT event_id FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
            .bind(room_id)
            .bind(event_type)
            .bind(state_key)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|r| r.0))
}

#[derive(Clone, Debug)]
pub struct Membership {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_pos: i64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

type MembershipRow = (String, String, String, String, i64, Option<String>, Option<String>);

fn membership_from(r: MembershipRow) -> Membership {
    Membership {
        room_id: r.0,
        user_id: r.1,
        membership: r.2,
        event_id: r.3,
        stream_pos: r.4,
        displayname: r.5,
        avatar_url: r.6,
    }
}

const MEMBERSHIP_COLUMNS: &str = "room_id, user_id, membership, event_id, stream_pos, displayname, avatar_url";

/// A member's membership as of the batch's stream position.
pub struct NewMembership<'q> {
    pub room_id: &'q str,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

pub fn set_membership<'q>(batch: &mut Batch<'q>, m: NewMembership<'q>) {
    batch
        .push(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_pos, displayname, avatar_url, forgotten)
             VALUES ($1, $2, $3, $4, {pos}, $5, $6, 0)
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, event_id = excluded.event_id,
               stream_pos = excluded.stream_pos, displayname = excluded.displayname, avatar_url = excluded.avatar_url,
               forgotten = 0",
            6,
        )
        .bind(m.room_id)
        .bind(m.user_id)
        .bind(m.membership)
        .bind(m.event_id)
        .bind(m.displayname)
        .bind(m.avatar_url);
}

pub async fn membership(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> Result<Option<Membership>> {
    let row: Option<MembershipRow> = sqlx::query_as(&format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = $1 AND user_id = $2"
    ))
    .bind(room_id)
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(membership_from))
}

/// Current members of a room with the given membership.
pub async fn members(conn: &mut AnyConnection, room_id: &str, membership: &str) -> Result<Vec<Membership>> {
    let rows: Vec<MembershipRow> = sqlx::query_as(&format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = $1 AND membership = $2 ORDER BY user_id"
    ))
    .bind(room_id)
    .bind(membership)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(membership_from).collect())
}

/// The servers with a joined member in a room, sorted: where the room's events go, and who may
/// read its state over federation.
pub async fn servers_in_room(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<String>> {
    let users: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = 'join'")
            .bind(room_id)
            .fetch_all(conn)
            .await?;
    let servers: std::collections::BTreeSet<String> = users
        .into_iter()
        .filter_map(|(user,)| user.split_once(':').map(|(_, server)| server.to_owned()))
        .collect();
    Ok(servers.into_iter().collect())
}

/// Whether `server` has a joined member in the room.
pub async fn server_in_room(conn: &mut AnyConnection, room_id: &str, server: &str) -> Result<bool> {
    Ok(servers_in_room(conn, room_id).await?.iter().any(|s| s == server))
}

/// Rooms in which the user currently has the given membership (forgotten rooms excluded).
pub async fn rooms_of_user(conn: &mut AnyConnection, user_id: &str, membership: &str) -> Result<Vec<Membership>> {
    let rows: Vec<MembershipRow> = sqlx::query_as(&format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE user_id = $1 AND membership = $2 AND forgotten = 0
         ORDER BY room_id"
    ))
    .bind(user_id)
    .bind(membership)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(membership_from).collect())
}

pub async fn forget(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> Result<()> {
    sqlx::query("UPDATE room_memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2")
        .bind(room_id)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_public(conn: &mut AnyConnection, room_id: &str, public: bool) -> Result<()> {
    sqlx::query("UPDATE rooms SET is_public = $2 WHERE room_id = $1")
        .bind(room_id)
        .bind(public as i64)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn is_public(conn: &mut AnyConnection, room_id: &str) -> Result<Option<bool>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT is_public FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.0 != 0))
}

/// Public rooms ordered by joined members, then room ID: `(room_id, joined_count)`.
pub async fn public_rooms(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT r.room_id, (SELECT COUNT(*) FROM room_memberships m WHERE m.room_id = r.room_id AND m.membership = 'join') AS n
         FROM rooms r WHERE r.is_public = 1 ORDER BY n DESC, r.room_id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// The rooms appservices published in their networks' directories: one network's
/// (`Some((appservice ID, network ID))`) or all of them, with their joined member counts.
pub async fn appservice_public_rooms(
    conn: &mut AnyConnection,
    network: Option<(&str, &str)>,
) -> Result<Vec<(String, i64)>> {
    let (appservice, network_id) = network.unwrap_or(("", ""));
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT DISTINCT l.room_id, (SELECT COUNT(*) FROM room_memberships m WHERE m.room_id = l.room_id AND m.membership = 'join') AS n
         FROM appservice_room_list l WHERE $1 = 0 OR (l.appservice_id = $2 AND l.network_id = $3)
         ORDER BY n DESC, l.room_id",
    )
    .bind(i64::from(network.is_some()))
    .bind(appservice)
    .bind(network_id)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Publishes (or withdraws) a room in an appservice's network directory.
pub async fn set_appservice_published(
    conn: &mut AnyConnection,
    appservice: &str,
    network_id: &str,
    room_id: &str,
    public: bool,
) -> Result<()> {
    let sql = if public {
        "INSERT INTO appservice_room_list (appservice_id, network_id, room_id) VALUES ($1, $2, $3)
         ON CONFLICT (appservice_id, network_id, room_id) DO NOTHING"
    } else {
        "DELETE FROM appservice_room_list WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3"
    };
    sqlx::query(sql)
        .bind(appservice)
        .bind(network_id)
        .bind(room_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn alias_insert(conn: &mut AnyConnection, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT (alias) DO NOTHING",
    )
    .bind(alias)
    .bind(room_id)
    .bind(creator)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `(room_id, creator)` of an alias.
pub async fn alias_get(conn: &mut AnyConnection, alias: &str) -> Result<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn alias_delete(conn: &mut AnyConnection, alias: &str) -> Result<()> {
    sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
        .bind(alias)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn aliases_of_room(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
        .bind(room_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}
