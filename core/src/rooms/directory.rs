//! The public room directory: which rooms are published, who may publish them, and the
//! `/publicRooms` listing (paginated by offset, searchable) built from current state.

use ruma::{
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    room::{JoinRuleKind, RoomType},
    OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, UInt, UserId,
};
use serde_json::Value;
use sqlx::AnyConnection;

use super::{current_state, current_state_content, power, room_rules};
use crate::{storage::rooms, Core, Error, Result};

/// Whether the user may change what the directory says about a room (its visibility, and
/// aliases they did not create): server admins, and joined users with the power to send
/// `m.room.canonical_alias`, as that is the room's own notion of "who curates its addresses".
pub async fn may_curate(
    core: &Core,
    conn: &mut AnyConnection,
    room_id: &str,
    user: &UserId,
    is_admin: bool,
) -> Result<bool> {
    let (_, rules) = room_rules(core, conn, room_id).await?;
    if is_admin {
        return Ok(true);
    }
    let joined = rooms::membership(conn, room_id, user.as_str())
        .await?
        .is_some_and(|m| m.membership == "join");
    if !joined {
        return Ok(false);
    }
    let state = current_state(core, conn, room_id).await?;
    let needed = power::event_level(conn, &rules, &state, "m.room.canonical_alias", true).await?;
    Ok(power::user_level(conn, &rules, &state, user.as_str()).await? >= needed)
}

/// Whether the room is published in the directory; NotFound for an unknown room.
pub async fn is_published(core: &Core, room_id: &str) -> Result<bool> {
    let mut conn = core.db.conn().await?;
    rooms::is_public(&mut conn, room_id)
        .await?
        .ok_or_else(|| Error::NotFound("Unknown room".into()))
}

/// Publishes or unpublishes a room, if the user may curate it.
pub async fn set_published(core: &Core, room_id: &str, user: &UserId, is_admin: bool, public: bool) -> Result<()> {
    let mut tx = core.db.write().await?;
    if !may_curate(core, &mut tx, room_id, user, is_admin).await? {
        return Err(Error::Forbidden(
            "You do not have permission to change this room's directory visibility".into(),
        ));
    }
    rooms::set_public(&mut tx, room_id, public).await?;
    tx.commit().await?;
    Ok(())
}

/// What a `/publicRooms` request asks for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Page size; `None` (or 0, as Synapse reads it) lists everything.
    pub limit: Option<usize>,
    /// A `next_batch`/`prev_batch` token from an earlier page.
    pub since: Option<String>,
    /// Case-insensitive substring of the name, topic or canonical alias.
    pub search: Option<String>,
    /// Room types to keep (`None` = rooms without a type); empty keeps all.
    pub room_types: Vec<Option<String>>,
    /// Which directory: Matrix's (the default), one appservice network's, or all of them.
    pub network: Network,
}

/// The directories `/publicRooms` lists from (its `third_party_instance_id` and
/// `include_all_networks`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    Matrix,
    /// Matrix's and every appservice network's.
    All,
    /// One appservice network's: `<appservice ID>|<network ID>`, as `/thirdparty/protocols`
    /// names its instances.
    Instance(String),
}

impl Query {
    /// A query as the client and federation APIs take it: `limit`, `since`, and a filter's
    /// search term and room types (an empty filter for the GET forms).
    pub fn from_request(limit: Option<UInt>, since: Option<String>, filter: &ruma::directory::Filter) -> Query {
        Query {
            limit: limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
            since,
            search: filter.generic_search_term.clone(),
            room_types: filter
                .room_types
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect(),
            network: Network::Matrix,
        }
    }
}

/// One page of the directory.
#[derive(Clone, Debug)]
pub struct Page {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

impl Page {
    /// `total_room_count_estimate` as the responses carry it.
    pub fn total_estimate(&self) -> Option<UInt> {
        UInt::try_from(self.total as u64).ok()
    }
}

/// Tokens are offsets into the (ordered, filtered) list: `p<offset>`.
fn parse_token(token: &str) -> Result<usize> {
    token
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::InvalidParam(format!("Invalid pagination token {token}")))
}

fn token(offset: usize) -> String {
    format!("p{offset}")
}

/// Lists the published rooms of this server, most joined members first.
pub async fn public_rooms(core: &Core, query: &Query) -> Result<Page> {
    let offset = query.since.as_deref().map(parse_token).transpose()?.unwrap_or(0);
    let limit = query.limit.filter(|l| *l > 0);
    let mut conn = core.db.conn().await?;
    let listed = match &query.network {
        Network::Matrix => rooms::public_rooms(&mut conn).await?,
        Network::Instance(instance) => {
            let network = instance.split_once('|').unwrap_or((instance.as_str(), ""));
            rooms::appservice_public_rooms(&mut conn, Some(network)).await?
        }
        Network::All => {
            let mut all = rooms::public_rooms(&mut conn).await?;
            for room in rooms::appservice_public_rooms(&mut conn, None).await? {
                if !all.iter().any(|(id, _)| *id == room.0) {
                    all.push(room);
                }
            }
            all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            all
        }
    };
    let search = query
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase);

    // Without a filter the page can be cut before reading any state; with one, every room's
    // state decides whether it counts.
    let filtering = search.is_some() || !query.room_types.is_empty();
    let (total, chunk) = if filtering {
        let mut matching = Vec::new();
        for (room_id, joined) in &listed {
            if let Some(entry) = summary(&mut conn, room_id, *joined).await? {
                if matches(&entry, search.as_deref(), &query.room_types) {
                    matching.push(entry);
                }
            }
        }
        let total = matching.len();
        (
            total,
            matching
                .into_iter()
                .skip(offset)
                .take(limit.unwrap_or(usize::MAX))
                .collect(),
        )
    } else {
        let mut chunk = Vec::new();
        for (room_id, joined) in listed.iter().skip(offset).take(limit.unwrap_or(usize::MAX)) {
            if let Some(entry) = summary(&mut conn, room_id, *joined).await? {
                chunk.push(entry);
            }
        }
        (listed.len(), chunk)
    };

    let (next_batch, prev_batch) = match limit {
        Some(limit) => (
            (offset + limit < total).then(|| token(offset + limit)),
            (offset > 0).then(|| token(offset.saturating_sub(limit))),
        ),
        None => (None, None),
    };
    Ok(Page {
        chunk,
        next_batch,
        prev_batch,
        total,
    })
}

fn matches(entry: &PublicRoomsChunk, search: Option<&str>, room_types: &[Option<String>]) -> bool {
    let type_ok = room_types.is_empty()
        || room_types
            .iter()
            .any(|t| t.as_deref() == entry.room_type.as_ref().map(|r| r.as_str()));
    let search_ok = search.is_none_or(|term| {
        [
            entry.name.as_deref(),
            entry.topic.as_deref(),
            entry.canonical_alias.as_ref().map(|a| a.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|field| field.to_lowercase().contains(term))
    });
    type_ok && search_ok
}

/// A string field of one piece of current state's content.
async fn state_str(conn: &mut AnyConnection, room_id: &str, event_type: &str, field: &str) -> Result<Option<String>> {
    let content = current_state_content(conn, room_id, event_type, "").await?;
    Ok(content
        .as_ref()
        .and_then(|c| c.get(field))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// The directory entry of a room, from its current state; `None` if its ID is unusable.
async fn summary(conn: &mut AnyConnection, room_id: &str, joined: i64) -> Result<Option<PublicRoomsChunk>> {
    let Ok(id) = OwnedRoomId::try_from(room_id) else {
        return Ok(None);
    };
    let history = state_str(conn, room_id, "m.room.history_visibility", "history_visibility").await?;
    let guests = state_str(conn, room_id, "m.room.guest_access", "guest_access").await?;
    let mut entry: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::try_from(joined.max(0) as u64).unwrap_or_default(),
        room_id: id,
        world_readable: history.as_deref() == Some("world_readable"),
        guest_can_join: guests.as_deref() == Some("can_join"),
    }
    .into();
    // Empty strings mean "unset" for these (clients clear a name by sending "").
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    entry.name = non_empty(state_str(conn, room_id, "m.room.name", "name").await?);
    entry.topic = non_empty(state_str(conn, room_id, "m.room.topic", "topic").await?);
    entry.canonical_alias = non_empty(state_str(conn, room_id, "m.room.canonical_alias", "alias").await?)
        .and_then(|a| OwnedRoomAliasId::try_from(a).ok());
    entry.avatar_url = non_empty(state_str(conn, room_id, "m.room.avatar", "url").await?).map(OwnedMxcUri::from);
    if let Some(rule) = state_str(conn, room_id, "m.room.join_rules", "join_rule").await? {
        entry.join_rule = JoinRuleKind::from(rule.as_str());
    }
    entry.room_type = state_str(conn, room_id, "m.room.create", "type")
        .await?
        .map(|t| RoomType::from(t.as_str()));
    Ok(Some(entry))
}
