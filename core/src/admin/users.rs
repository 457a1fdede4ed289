//! Users as admins manage them (Synapse's `/_synapse/admin/v2/users` and friends): listing
//! and querying accounts, creating and changing them, deactivation with erasure, shadow-bans,
//! suspension, locks and rate limit overrides.

use ruma::UserId;
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;

use super::{contains_pattern, SqlPage};
use crate::{
    accounts,
    rooms::membership,
    storage::{rooms, users, users::User},
    util::{hash_token, random_device_id, random_string},
    Core, Db, Error, Result,
};

/// The mark an erased user's events carry in `events.redacted_by`: never an event ID (no
/// sigil), so every reader that serves redacted events prunes them, and no redaction event is
/// looked up for it.
pub const ERASED: &str = "erased";

/// The orders Synapse's user list accepts, as the column each sorts by.
fn order_column(order_by: &str) -> Result<&'static str> {
    Ok(match order_by {
        "name" => "user_id",
        "displayname" => "displayname",
        "admin" => "is_admin",
        "is_guest" => "is_guest",
        "deactivated" => "deactivated",
        "shadow_banned" => "shadow_banned",
        "locked" => "locked",
        "user_type" => "user_type",
        "avatar_url" => "avatar_url",
        "creation_ts" => "created_ts",
        "last_seen_ts" => LAST_SEEN,
        other => return Err(Error::InvalidParam(format!("Unknown value for order_by: {other}"))),
    })
}

/// Filters of the user list; `None` leaves a flag unfiltered.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Part of the user ID (localpart included) or of the display name.
    pub name: Option<String>,
    /// Part of the user ID.
    pub user_id: Option<String>,
    pub guests: Option<bool>,
    pub deactivated: Option<bool>,
    pub admins: Option<bool>,
    pub locked: Option<bool>,
    pub suspended: Option<bool>,
    pub shadow_banned: Option<bool>,
}

/// A page of users (each as `list_entry`), and how many match in all.
pub async fn list(db: &Db, filter: &ListFilter, order_by: &str, page: SqlPage) -> Result<(Vec<Value>, i64)> {
    let order = order_column(order_by)?;
    let mut clauses: Vec<String> = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    if let Some(name) = &filter.name {
        binds.push(contains_pattern(name));
        let n = binds.len();
        clauses.push(format!(
            "(LOWER(user_id) LIKE ${n} ESCAPE '\\' OR LOWER(displayname) LIKE ${n} ESCAPE '\\')"
        ));
    }
    if let Some(user_id) = &filter.user_id {
        binds.push(contains_pattern(user_id));
        clauses.push(format!("LOWER(user_id) LIKE ${} ESCAPE '\\'", binds.len()));
    }
    for (flag, column) in [
        (filter.guests, "is_guest"),
        (filter.deactivated, "deactivated"),
        (filter.admins, "is_admin"),
        (filter.locked, "locked"),
        (filter.suspended, "suspended"),
        (filter.shadow_banned, "shadow_banned"),
    ] {
        if let Some(flag) = flag {
            clauses.push(format!("{column} = {}", flag as i64));
        }
    }
    let filter_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    let count_text = format!("SELECT COUNT(*) FROM users{filter_sql}");
    let mut count = sqlx::query_as::<_, (i64,)>(&count_text);
    for b in &binds {
        count = count.bind(b.clone());
    }
    let (total,) = count.fetch_one(db.pool()).await?;
    let dir = page.dir();
    let text = format!(
        "SELECT {}, {LAST_SEEN} FROM users{filter_sql} ORDER BY {order} {dir}, user_id {dir} LIMIT {} OFFSET {}",
        users::COLUMNS,
        page.limit,
        page.from
    );
    let mut query = sqlx::query(&text);
    for b in &binds {
        query = query.bind(b.clone());
    }
    let rows = query.fetch_all(db.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let last_seen: Option<i64> = sqlx::Row::try_get(row, 13)?;
        out.push(list_entry(&users::from_row(row)?, last_seen));
    }
    Ok((out, total))
}

/// When a user's devices were last seen (the latest of them), as a column of `users`.
const LAST_SEEN: &str = "(SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = users.user_id)";

/// A user as Synapse's list shows one.
fn list_entry(u: &User, last_seen_ts: Option<i64>) -> Value {
    json!({
        "name": u.user_id,
        "user_type": u.user_type,
        "is_guest": u.is_guest,
        "admin": u.is_admin,
        "deactivated": u.deactivated,
        "shadow_banned": u.shadow_banned,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "creation_ts": u.created_ts,
        "approved": true,
        "erased": u.erased,
        "last_seen_ts": last_seen_ts,
        "locked": u.locked,
        "suspended": u.suspended,
    })
}

/// A user as Synapse's query answers one; `None` for an unknown user.
pub async fn query(db: &Db, user_id: &str) -> Result<Option<Value>> {
    let Some(u) = users::get(db, user_id).await? else {
        return Ok(None);
    };
    let (last_seen,): (Option<i64>,) = sqlx::query_as("SELECT MAX(last_seen_ts) FROM devices WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(db.pool())
        .await?;
    let mut out = list_entry(&u, last_seen);
    let extra = json!({
        "threepids": [],
        "external_ids": [],
        "appservice_id": null,
        "consent_server_notice_sent": null,
        "consent_version": null,
        "consent_ts": null,
    });
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    Ok(Some(out))
}

/// What `PUT /_synapse/admin/v2/users/{userId}` may set; absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub password: Option<String>,
    /// With a new password: log every device out (Synapse's default).
    pub logout_devices: bool,
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
    pub user_type: Option<Option<String>>,
}

/// Creates the user with `changes` when it does not exist (answering `true`), else changes it.
pub async fn create_or_modify(core: &Core, admin: &UserId, user_id: &UserId, changes: Changes) -> Result<bool> {
    if !core.is_local(user_id) {
        return Err(Error::InvalidParam(
            "This endpoint can only be used with local users".into(),
        ));
    }
    let existing = users::get(&core.db, user_id.as_str()).await?;
    if existing.is_none() {
        accounts::validate_localpart(user_id.localpart())?;
        // Synapse names a new account after its localpart unless told otherwise.
        let displayname = match &changes.displayname {
            Some(name) => name.clone(),
            None => Some(user_id.localpart().to_owned()),
        };
        accounts::register(
            &core.db,
            accounts::NewAccount {
                user_id: user_id.as_str(),
                password: changes.password.as_deref(),
                is_admin: changes.admin.unwrap_or(false),
                displayname: displayname.as_deref(),
                ..Default::default()
            },
        )
        .await?;
        let mut tx = core.db.write().await?;
        set_flags(&mut tx, user_id.as_str(), &changes).await?;
        if let Some(Some(url)) = &changes.avatar_url {
            users::set_avatar_url(&mut tx, user_id.as_str(), Some(url)).await?;
        }
        tx.commit().await?;
        if changes.deactivated == Some(true) {
            deactivate(core, user_id, false).await?;
        }
        return Ok(true);
    }
    let existing = existing.expect("checked above");
    if changes.admin == Some(false) && admin == user_id {
        return Err(Error::InvalidParam("You may not demote yourself".into()));
    }
    if existing.deactivated && changes.deactivated == Some(false) && changes.password.is_none() {
        return Err(Error::InvalidParam(
            "Must provide a password to re-activate an account".into(),
        ));
    }
    if let Some(password) = &changes.password {
        accounts::change_password(&core.db, user_id.as_str(), password, !changes.logout_devices, None).await?;
    }
    let mut tx = core.db.write().await?;
    set_flags(&mut tx, user_id.as_str(), &changes).await?;
    if let Some(name) = &changes.displayname {
        users::set_displayname(&mut tx, user_id.as_str(), name.as_deref()).await?;
    }
    if let Some(url) = &changes.avatar_url {
        users::set_avatar_url(&mut tx, user_id.as_str(), url.as_deref()).await?;
    }
    if existing.deactivated && changes.deactivated == Some(false) {
        sqlx::query("UPDATE users SET deactivated = 0, erased = 0 WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if changes.displayname.is_some() || changes.avatar_url.is_some() {
        // Members see the new profile in their rooms, as after the user's own change.
        membership::refresh_profile(core, user_id).await?;
    }
    if !existing.deactivated && changes.deactivated == Some(true) {
        deactivate(core, user_id, false).await?;
    }
    Ok(false)
}

async fn set_flags(conn: &mut AnyConnection, user_id: &str, changes: &Changes) -> Result<()> {
    if let Some(admin) = changes.admin {
        set_flag(conn, user_id, "is_admin", admin).await?;
    }
    if let Some(locked) = changes.locked {
        set_flag(conn, user_id, "locked", locked).await?;
    }
    if let Some(user_type) = &changes.user_type {
        sqlx::query("UPDATE users SET user_type = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(user_type.as_deref())
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The flags an admin sets on an account.
#[derive(Clone, Copy, Debug)]
pub enum Flag {
    ShadowBanned,
    Suspended,
    Locked,
}

async fn set_flag(conn: &mut AnyConnection, user_id: &str, column: &'static str, on: bool) -> Result<bool> {
    let done = sqlx::query(&format!("UPDATE users SET {column} = $2 WHERE user_id = $1"))
        .bind(user_id)
        .bind(on as i64)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets or clears a flag of a local user.
pub async fn set(core: &Core, user_id: &UserId, flag: Flag, on: bool) -> Result<()> {
    local_user(core, user_id).await?;
    let column = match flag {
        Flag::ShadowBanned => "shadow_banned",
        Flag::Suspended => "suspended",
        Flag::Locked => "locked",
    };
    let mut tx = core.db.write().await?;
    set_flag(&mut tx, user_id.as_str(), column, on).await?;
    tx.commit().await
}

/// The local user `user_id`, or the admin API's errors for another server's or a missing one.
pub async fn local_user(core: &Core, user_id: &UserId) -> Result<User> {
    if !core.is_local(user_id) {
        return Err(Error::InvalidParam("Can only look up local users".into()));
    }
    users::get(&core.db, user_id.as_str())
        .await?
        .ok_or_else(|| Error::NotFound("User not found".into()))
}

/// Deactivates a user: no more logins or tokens, profile cleared, every room left (invites
/// rejected). With `erase`, the events the user sent are served redacted from now on (their
/// messages, and the member events that carried their profile).
pub async fn deactivate(core: &Core, user_id: &UserId, erase: bool) -> Result<()> {
    local_user(core, user_id).await?;
    accounts::deactivate(&core.db, user_id.as_str()).await?;
    let mut conn = core.db.conn().await?;
    let mut rooms_in = rooms::rooms_of_user(&mut conn, user_id.as_str(), "join").await?;
    rooms_in.extend(rooms::rooms_of_user(&mut conn, user_id.as_str(), "invite").await?);
    rooms_in.extend(rooms::rooms_of_user(&mut conn, user_id.as_str(), "knock").await?);
    drop(conn);
    for m in rooms_in {
        if let Err(e) = membership::leave(core, &m.room_id, user_id, None).await {
            // A room elsewhere that cannot be reached keeps the membership; the account is
            // deactivated all the same.
            tracing::warn!(room_id = %m.room_id, user_id = %user_id, error = %e, "deactivated user could not leave a room");
        }
    }
    if erase {
        let mut tx = core.db.write().await?;
        sqlx::query("UPDATE users SET erased = 1 WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE events SET redacted_by = $2 WHERE sender = $1 AND redacted_by IS NULL
             AND (state_key IS NULL OR event_type = 'm.room.member')",
        )
        .bind(user_id.as_str())
        .bind(ERASED)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// A user's rate limit override, `(messages_per_second, burst_count)`.
pub async fn ratelimit_override(core: &Core, user_id: &UserId) -> Result<Option<(i64, i64)>> {
    local_user(core, user_id).await?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT messages_per_second, burst_count FROM ratelimit_overrides WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(core.db.pool())
            .await?;
    Ok(row)
}

/// Sets (`Some`) or removes a user's rate limit override.
pub async fn set_ratelimit_override(core: &Core, user_id: &UserId, limits: Option<(i64, i64)>) -> Result<()> {
    local_user(core, user_id).await?;
    if limits.is_some_and(|(mps, burst)| mps < 0 || burst < 0) {
        return Err(Error::InvalidParam("Rate limits must not be negative".into()));
    }
    let mut tx = core.db.write().await?;
    sqlx::query("DELETE FROM ratelimit_overrides WHERE user_id = $1")
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?;
    if let Some((mps, burst)) = limits {
        sqlx::query("INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count) VALUES ($1, $2, $3)")
            .bind(user_id.as_str())
            .bind(mps)
            .bind(burst)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The rooms the user is joined to.
pub async fn joined_rooms(core: &Core, user_id: &UserId) -> Result<Vec<String>> {
    local_user(core, user_id).await?;
    let mut conn = core.db.conn().await?;
    let rooms = rooms::rooms_of_user(&mut conn, user_id.as_str(), "join").await?;
    Ok(rooms.into_iter().map(|m| m.room_id).collect())
}

/// Every room the user has a membership in, with that membership.
pub async fn memberships(core: &Core, user_id: &UserId) -> Result<Map<String, Value>> {
    local_user(core, user_id).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT room_id, membership FROM room_memberships WHERE user_id = $1 ORDER BY room_id")
            .bind(user_id.as_str())
            .fetch_all(core.db.pool())
            .await?;
    Ok(rows.into_iter().map(|(r, m)| (r, Value::String(m))).collect())
}

/// The user's account data: `global` by type, and `rooms` by room then type.
pub async fn account_data(core: &Core, user_id: &UserId) -> Result<Value> {
    local_user(core, user_id).await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT room_id, data_type, content FROM account_data WHERE user_id = $1 ORDER BY room_id, data_type",
    )
    .bind(user_id.as_str())
    .fetch_all(core.db.pool())
    .await?;
    let (mut global, mut per_room) = (Map::new(), Map::new());
    for (room_id, kind, content) in rows {
        let content: Value = serde_json::from_str(&content).unwrap_or_default();
        if room_id.is_empty() {
            global.insert(kind, content);
        } else if let Value::Object(room) = per_room.entry(room_id).or_insert_with(|| json!({})) {
            room.insert(kind, content);
        }
    }
    Ok(json!({ "global": global, "rooms": per_room }))
}

/// The user's pushers as Synapse's admin API lists them.
pub async fn pushers(core: &Core, user_id: &UserId) -> Result<Vec<Value>> {
    local_user(core, user_id).await?;
    let list = crate::push::pushers::list(&core.db, user_id.as_str()).await?;
    Ok(list
        .into_iter()
        .map(|p| {
            json!({
                "app_display_name": p["app_display_name"],
                "app_id": p["app_id"],
                "data": p["data"],
                "device_display_name": p["device_display_name"],
                "kind": p["kind"],
                "lang": p["lang"],
                "profile_tag": p.get("profile_tag").cloned().unwrap_or(Value::String(String::new())),
                "pushkey": p["pushkey"],
            })
        })
        .collect())
}

/// Whether a localpart is free for a new account (an error says why not).
pub async fn username_available(core: &Core, localpart: &str) -> Result<()> {
    let user_id = accounts::user_id_for(localpart, core.server_name.as_str())?;
    if users::get(&core.db, &user_id).await?.is_some() {
        return Err(Error::UserInUse);
    }
    Ok(())
}

/// An access token for `user_id`, for an admin acting as them: it belongs to no device the
/// user sees (as Synapse's puppet tokens), and expires at `valid_until_ms` when given.
pub async fn login_as(core: &Core, admin: &UserId, user_id: &UserId, valid_until_ms: Option<i64>) -> Result<String> {
    let user = local_user(core, user_id).await?;
    if admin == user_id {
        return Err(Error::InvalidParam("Cannot use admin API to login as self".into()));
    }
    if user.deactivated {
        return Err(Error::UserDeactivated);
    }
    let token = format!("weft_{}", random_string(40));
    let device_id = random_device_id();
    let mut tx = core.db.write().await?;
    crate::storage::tokens::insert_access(
        &mut tx,
        &hash_token(&token),
        user_id.as_str(),
        &device_id,
        valid_until_ms,
    )
    .await?;
    tx.commit().await?;
    Ok(token)
}
