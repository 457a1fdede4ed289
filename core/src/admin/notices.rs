//! Server notices: messages from the server to one of its users, in a room of the user's own
//! that the configured notices user created and invited them to, tagged `m.server_notice` in
//! the user's account data (Synapse's server notices, which clients show apart).

use ruma::{OwnedUserId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    account_data,
    events::builder::EventTemplate,
    rooms::{
        self,
        create::{self, CreateRoom, Preset},
    },
    storage::{rooms as room_store, users},
    Core, Error, Result,
};

/// The tag clients know a server notices room by.
pub const TAG: &str = "m.server_notice";

/// Who sends server notices, and what their rooms are called.
#[derive(Clone, Debug)]
pub struct Sender<'a> {
    pub localpart: &'a str,
    pub display_name: Option<&'a str>,
    pub avatar_url: Option<&'a str>,
    pub room_name: &'a str,
}

/// A notice to send: an event of `event_type` (a state event with `state_key`) with `content`.
#[derive(Clone, Debug)]
pub struct Notice<'a> {
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Value,
    /// The admin's transaction, for idempotent retries: (admin user ID, transaction ID).
    pub txn: Option<(&'a str, &'a str)>,
}

/// Sends a notice to `user_id`, creating their notices room first when they have none (or
/// left it); answers the event's ID.
pub async fn send(core: &Core, sender: &Sender<'_>, user_id: &UserId, notice: Notice<'_>) -> Result<String> {
    if !core.is_local(user_id) {
        return Err(Error::InvalidParam(
            "Server notices can only be sent to local users".into(),
        ));
    }
    let user = users::get(&core.db, user_id.as_str())
        .await?
        .ok_or_else(|| Error::NotFound("User not found".into()))?;
    if user.deactivated {
        return Err(Error::InvalidParam(
            "Cannot send a server notice to a deactivated user".into(),
        ));
    }
    let system = system_user(core, sender).await?;
    if system == user_id {
        return Err(Error::InvalidParam(
            "Cannot send a server notice to the notices user".into(),
        ));
    }
    let room_id = match current_room(core, user_id).await? {
        Some(room_id) => room_id,
        None => create_room(core, sender, &system, user_id).await?,
    };
    let template = match notice.state_key {
        Some(key) => EventTemplate::state(notice.event_type, key, notice.content),
        None => EventTemplate::message(notice.event_type, notice.content),
    };
    let txn = notice.txn.map(|(admin, txn_id)| (system.as_str(), admin, txn_id));
    let sent = rooms::send(core, &room_id, &system, template, txn).await?;
    Ok(sent.event_id)
}

/// The notices user, created the first time (no password: nobody logs in as it).
async fn system_user(core: &Core, sender: &Sender<'_>) -> Result<OwnedUserId> {
    let user_id = crate::accounts::user_id_for(sender.localpart, core.server_name.as_str())?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|e| Error::Config(format!("server notices user: {e}")))?;
    let mut tx = core.db.write().await?;
    if users::insert(&mut tx, user_id.as_str(), None, false, false, sender.display_name).await? {
        users::set_avatar_url(&mut tx, user_id.as_str(), sender.avatar_url).await?;
    }
    tx.commit().await?;
    Ok(user_id)
}

/// The user's notices room, while they are invited to or joined to it.
async fn current_room(core: &Core, user_id: &UserId) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT room_id FROM server_notice_rooms WHERE user_id = $1")
        .bind(user_id.as_str())
        .fetch_optional(core.db.pool())
        .await?;
    let Some((room_id,)) = row else { return Ok(None) };
    let mut conn = core.db.conn().await?;
    let membership = room_store::membership(&mut conn, &room_id, user_id.as_str()).await?;
    Ok(membership
        .filter(|m| m.membership == "join" || m.membership == "invite")
        .map(|_| room_id))
}

/// A new notices room: private, the user invited, members other than the notices user unable
/// to send (Synapse's `users_default` of -10), tagged for the user.
async fn create_room(core: &Core, sender: &Sender<'_>, system: &UserId, user_id: &UserId) -> Result<String> {
    let mut power = Map::new();
    power.insert("users_default".into(), json!(-10));
    let created = create::create_room(
        core,
        system,
        CreateRoom {
            version: RoomVersionId::V11,
            preset: Preset::PrivateChat,
            creation_content: Map::new(),
            power_level_override: Some(power),
            name: Some(sender.room_name.to_owned()),
            topic: None,
            alias: None,
            invite: vec![user_id.to_owned()],
            is_direct: false,
            initial_state: Vec::new(),
            public: false,
        },
    )
    .await?;
    let mut tx = core.db.write().await?;
    sqlx::query(
        "INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id",
    )
    .bind(user_id.as_str())
    .bind(&created.room_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    account_data::set_tag(core, user_id.as_str(), &created.room_id, TAG, json!({})).await?;
    Ok(created.room_id)
}
