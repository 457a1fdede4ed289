//! Deleting a room (`DELETE /_synapse/admin/v2/rooms/{roomId}`): a background job with a
//! persisted status that admins poll.
//!
//! The job blocks the room (when asked), makes a notice room (when `new_room_user_id` is
//! given), makes every local member leave through the room writer and join the notice room,
//! moves the room's local aliases there, and then purges the room (`purge`). Its status row
//! goes `shutting_down` -> `purging` -> `complete` or `failed`.
//!
//! A job runs in the process that accepted it and is not resumed elsewhere: it refreshes its
//! row's `updated_ts` while it runs, and a row left active without a refresh for `STALE_MS`
//! (its process stopped) is reported, and recorded, as failed. At start, a server on SQLite
//! (one process) fails every job left active at once.

use std::time::Duration;

use ruma::{RoomVersionId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{
    events::builder::EventTemplate,
    rooms::{create, membership},
    storage::{rooms as room_store, users},
    util, Core, Error, Result,
};

/// How often a running job refreshes its row.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long an active row may go without a refresh before its job counts as dead.
const STALE_MS: i64 = 60_000;

const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// The request's body.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct DeleteParams {
    pub new_room_user_id: Option<String>,
    pub room_name: Option<String>,
    pub message: Option<String>,
    #[serde(default)]
    pub block: bool,
    #[serde(default = "yes")]
    pub purge: bool,
    #[serde(default)]
    pub force_purge: bool,
}

fn yes() -> bool {
    true
}

/// What the shutdown did (Synapse's `shutdown_room`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ShutdownResult {
    pub kicked_users: Vec<String>,
    pub failed_to_kick_users: Vec<String>,
    pub local_aliases: Vec<String>,
    pub new_room_id: Option<String>,
}

/// A deletion's status as admins poll it.
#[derive(Clone, Debug)]
pub struct Status {
    pub delete_id: String,
    pub room_id: String,
    pub status: String,
    pub error: Option<String>,
    pub result: ShutdownResult,
}

impl Status {
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "delete_id": self.delete_id,
            "status": self.status,
            "shutdown_room": self.result,
        });
        if let Some(error) = &self.error {
            value["error"] = json!(error);
        }
        value
    }
}

/// Checks a deletion request and starts its job; answers the deletion's ID.
pub async fn start(
    core: &Core,
    room_id: &str,
    admin: &UserId,
    params: DeleteParams,
    new_room_version: RoomVersionId,
) -> Result<String> {
    if let Some(user) = &params.new_room_user_id {
        let user = UserId::parse(user).map_err(|_| Error::InvalidParam(format!("{user} is not a valid user ID")))?;
        if !core.is_local(&user) {
            return Err(Error::InvalidParam("User must be our own: new_room_user_id".into()));
        }
        if users::get(&core.db, user.as_str()).await?.is_none_or(|u| u.deactivated) {
            return Err(Error::InvalidParam(format!("Unknown user {user}")));
        }
    }
    let now = util::now_ms();
    let mut tx = core.db.write().await?;
    let known = sqlx::query_scalar::<_, i64>("SELECT 1 FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if !known && !params.block {
        return Err(Error::InvalidParam(format!("Unknown room {room_id}")));
    }
    let active: Option<String> = sqlx::query_scalar(
        "SELECT delete_id FROM room_deletions WHERE room_id = $1 AND status IN ('shutting_down', 'purging')
         AND updated_ts > $2",
    )
    .bind(room_id)
    .bind(now - STALE_MS)
    .fetch_optional(&mut *tx)
    .await?;
    if active.is_some() {
        return Err(Error::InvalidParam(format!(
            "History purge already in progress for {room_id}"
        )));
    }
    let delete_id = util::random_string(16);
    sqlx::query(
        "INSERT INTO room_deletions (delete_id, room_id, status, params, created_ts, updated_ts)
         VALUES ($1, $2, 'shutting_down', $3, $4, $4)",
    )
    .bind(&delete_id)
    .bind(room_id)
    .bind(serde_json::to_string(&params).map_err(Error::internal)?)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(room_id, delete_id, %admin, "room deletion started");
    let job = Job {
        core: core.clone(),
        delete_id: delete_id.clone(),
        room_id: room_id.to_owned(),
        admin: admin.to_owned(),
        params,
        new_room_version,
    };
    tokio::spawn(job.run());
    Ok(delete_id)
}

struct Job {
    core: Core,
    delete_id: String,
    room_id: String,
    admin: ruma::OwnedUserId,
    params: DeleteParams,
    new_room_version: RoomVersionId,
}

impl Job {
    async fn run(self) {
        let heartbeat = tokio::spawn(heartbeat(self.core.clone(), self.delete_id.clone()));
        let mut result = ShutdownResult::default();
        let outcome = self.steps(&mut result).await;
        heartbeat.abort();
        let (status, error) = match &outcome {
            Ok(()) => ("complete", None),
            Err(e) => {
                tracing::warn!(room_id = %self.room_id, delete_id = %self.delete_id, error = %e, "room deletion failed");
                ("failed", Some(e.to_string()))
            }
        };
        if let Err(e) = self.record(status, error.as_deref(), &result).await {
            tracing::error!(delete_id = %self.delete_id, error = %e, "cannot record a room deletion's outcome");
        }
    }

    async fn steps(&self, result: &mut ShutdownResult) -> Result<()> {
        let core = &self.core;
        if self.params.block {
            super::rooms::set_blocked(core, &self.room_id, self.admin.as_str(), true).await?;
        }
        let known = {
            let mut conn = core.db.conn().await?;
            room_store::version(&core.db, &mut conn, &self.room_id).await?.is_some()
        };
        if !known {
            // Blocked ahead of time: nothing else to do.
            return Ok(());
        }
        self.shut_down(result).await?;
        self.record("shutting_down", None, result).await?;
        if self.params.purge {
            self.record("purging", None, result).await?;
            super::purge::purge_room(core, &self.room_id, self.params.force_purge).await?;
        }
        Ok(())
    }

    /// Moves the local members out (to the notice room, when there is one) and the aliases.
    async fn shut_down(&self, result: &mut ShutdownResult) -> Result<()> {
        let core = &self.core;
        let new_room = match &self.params.new_room_user_id {
            Some(owner) => {
                let owner = UserId::parse(owner).map_err(Error::internal)?;
                Some((self.notice_room(&owner).await?, owner))
            }
            None => None,
        };
        result.new_room_id = new_room.as_ref().map(|(id, _)| id.clone());
        let locals: Vec<room_store::Membership> = {
            let mut conn = core.db.conn().await?;
            let mut all = Vec::new();
            for kind in ["join", "invite", "knock"] {
                all.extend(room_store::members(&mut conn, &self.room_id, kind).await?);
            }
            all
        };
        for member in locals {
            let Ok(user) = UserId::parse(&member.user_id) else {
                continue;
            };
            if !core.is_local(&user) {
                continue;
            }
            match self
                .move_member(&user, new_room.as_ref().map(|(id, _)| id.as_str()))
                .await
            {
                Ok(()) => result.kicked_users.push(user.to_string()),
                Err(e) => {
                    tracing::warn!(room_id = %self.room_id, %user, error = %e, "cannot move a member out of a deleted room");
                    result.failed_to_kick_users.push(user.to_string());
                }
            }
        }
        let mut tx = core.db.write().await?;
        result.local_aliases = room_store::aliases_of_room(&mut tx, &self.room_id).await?;
        if let Some((new_room_id, _)) = &new_room {
            sqlx::query("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1")
                .bind(&self.room_id)
                .bind(new_room_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// The member leaves (as themselves, so that no power in the room is needed) and joins the
    /// notice room. The room is not forgotten for them: their next sync must show the leave.
    async fn move_member(&self, user: &UserId, new_room: Option<&str>) -> Result<()> {
        membership::leave(&self.core, &self.room_id, user, None).await?;
        if let Some(new_room) = new_room {
            membership::join(&self.core, new_room, user, None, &Map::new()).await?;
        }
        Ok(())
    }

    /// A public room owned by `owner` where members cannot speak, with `owner`'s message.
    async fn notice_room(&self, owner: &UserId) -> Result<String> {
        let core = &self.core;
        let mut power = Map::new();
        power.insert("users_default".into(), json!(-10));
        let created = create::create_room(
            core,
            owner,
            create::CreateRoom {
                version: self.new_room_version.clone(),
                preset: create::Preset::PublicChat,
                creation_content: Map::new(),
                power_level_override: Some(power),
                name: Some(
                    self.params
                        .room_name
                        .clone()
                        .unwrap_or_else(|| DEFAULT_ROOM_NAME.into()),
                ),
                topic: None,
                alias: None,
                invite: Vec::new(),
                is_direct: false,
                initial_state: Vec::new(),
                public: false,
            },
        )
        .await?;
        let body = self.params.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.into());
        crate::rooms::send(
            core,
            &created.room_id,
            owner,
            EventTemplate::message("m.room.message", json!({ "msgtype": "m.text", "body": body })),
            None,
        )
        .await?;
        Ok(created.room_id)
    }

    async fn record(&self, status: &str, error: Option<&str>, result: &ShutdownResult) -> Result<()> {
        let mut tx = self.core.db.write().await?;
        sqlx::query(
            "UPDATE room_deletions SET status = $2, error = $3, result = $4, updated_ts = $5 WHERE delete_id = $1",
        )
        .bind(&self.delete_id)
        .bind(status)
        .bind(error)
        .bind(serde_json::to_string(result).map_err(Error::internal)?)
        .bind(util::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

async fn heartbeat(core: Core, delete_id: String) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let refreshed = async {
            let mut tx = core.db.write().await?;
            sqlx::query(
                "UPDATE room_deletions SET updated_ts = $2 WHERE delete_id = $1
                 AND status IN ('shutting_down', 'purging')",
            )
            .bind(&delete_id)
            .bind(util::now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        if let Err(e) = refreshed.await {
            tracing::warn!(delete_id, error = %e, "cannot refresh a room deletion's status");
        }
    }
}

const INTERRUPTED: &str = "The deletion was interrupted: the server running it stopped";

/// Records as failed the active jobs not refreshed since `before` (ms since the epoch).
async fn fail_stale(core: &Core, before: i64) -> Result<u64> {
    // Read first: a poll then writes nothing in the common case.
    let stale: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM room_deletions WHERE status IN ('shutting_down', 'purging') AND updated_ts < $1 LIMIT 1",
    )
    .bind(before)
    .fetch_optional(core.db.pool())
    .await?;
    if stale.is_none() {
        return Ok(0);
    }
    let mut tx = core.db.write().await?;
    let done = sqlx::query(
        "UPDATE room_deletions SET status = 'failed', error = $2, updated_ts = $3
         WHERE status IN ('shutting_down', 'purging') AND updated_ts < $1",
    )
    .bind(before)
    .bind(INTERRUPTED)
    .bind(util::now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done)
}

/// At the start of the only process on a database (SQLite): every job still active was this
/// server's previous run's, which stopped.
pub async fn fail_interrupted(core: &Core) -> Result<u64> {
    fail_stale(core, i64::MAX).await
}

type StatusRow = (String, String, String, Option<String>, Option<String>);

fn status_from(row: StatusRow) -> Status {
    let (delete_id, room_id, status, error, result) = row;
    Status {
        delete_id,
        room_id,
        status,
        error,
        result: result.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default(),
    }
}

/// A deletion's status.
pub async fn status(core: &Core, delete_id: &str) -> Result<Option<Status>> {
    fail_stale(core, util::now_ms() - STALE_MS).await?;
    let row: Option<StatusRow> =
        sqlx::query_as("SELECT delete_id, room_id, status, error, result FROM room_deletions WHERE delete_id = $1")
            .bind(delete_id)
            .fetch_optional(core.db.pool())
            .await?;
    Ok(row.map(status_from))
}

/// The statuses of a room's deletions, oldest first.
pub async fn statuses_of_room(core: &Core, room_id: &str) -> Result<Vec<Status>> {
    fail_stale(core, util::now_ms() - STALE_MS).await?;
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT delete_id, room_id, status, error, result FROM room_deletions WHERE room_id = $1
         ORDER BY created_ts, delete_id",
    )
    .bind(room_id)
    .fetch_all(core.db.pool())
    .await?;
    Ok(rows.into_iter().map(status_from).collect())
}
