//! `/room_keys/*`: server-side key backup versions and their keys.

use std::collections::BTreeMap;

use axum::Router;
use http::StatusCode;
use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version, KeyBackupData, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, UInt,
};
use serde_json::json;
use weft_core::e2ee::backup::{self, BackupError, Scope, SessionKey};

use super::keys::{object, raw};
use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::{Ruma, RumaRoute},
    state::AppState,
};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(create_version)
        .ruma(latest_version)
        .ruma(get_version)
        .ruma(update_version)
        .ruma(delete_version)
        .ruma(put_all)
        .ruma(put_room)
        .ruma(put_session)
        .ruma(get_all)
        .ruma(get_room)
        .ruma(get_session)
        .ruma(delete_all)
        .ruma(delete_room)
        .ruma(delete_session)
}

fn backup_error(e: BackupError) -> MatrixError {
    match e {
        BackupError::Core(e) => e.into(),
        BackupError::NotFound => MatrixError::not_found("Unknown backup version"),
        BackupError::WrongVersion { current } => MatrixError {
            status: StatusCode::FORBIDDEN,
            errcode: "M_WRONG_ROOM_KEYS_VERSION".into(),
            message: "Wrong backup version".into(),
            extra: Some(json!({ "current_version": current })),
        },
    }
}

fn uint(n: i64) -> UInt {
    UInt::try_from(n).unwrap_or_default()
}

async fn create_version(
    state: AppState,
    req: Ruma<create_backup_version::v3::Request>,
) -> ApiResult<create_backup_version::v3::Response> {
    let user = req.sender()?;
    let algorithm = object(&req.algorithm, "backup algorithm")?;
    let version = backup::create_version(&state.core, user.user_id.as_str(), &algorithm).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn info(state: &AppState, user: &str, version: Option<&str>) -> ApiResult<backup::VersionInfo> {
    backup::version_info(&state.core, user, version)
        .await
        .map_err(backup_error)
}

async fn latest_version(
    state: AppState,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<get_latest_backup_info::v3::Response> {
    let user = req.sender()?;
    let i = info(&state, user.user_id.as_str(), None).await?;
    Ok(get_latest_backup_info::v3::Response::new(
        raw(&i.algorithm)?,
        uint(i.count),
        i.etag,
        i.version,
    ))
}

async fn get_version(
    state: AppState,
    req: Ruma<get_backup_info::v3::Request>,
) -> ApiResult<get_backup_info::v3::Response> {
    let user = req.sender()?;
    let i = info(&state, user.user_id.as_str(), Some(&req.version)).await?;
    Ok(get_backup_info::v3::Response::new(
        raw(&i.algorithm)?,
        uint(i.count),
        i.etag,
        i.version,
    ))
}

async fn update_version(
    state: AppState,
    req: Ruma<update_backup_version::v3::Request>,
) -> ApiResult<update_backup_version::v3::Response> {
    let user = req.sender()?;
    let algorithm = object(&req.algorithm, "backup algorithm")?;
    if algorithm
        .get("version")
        .is_some_and(|v| v.as_str() != Some(req.version.as_str()))
    {
        return Err(MatrixError::invalid_param(
            "version in the body does not match the path",
        ));
    }
    backup::update_version(&state.core, user.user_id.as_str(), &req.version, &algorithm)
        .await
        .map_err(backup_error)?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    state: AppState,
    req: Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<delete_backup_version::v3::Response> {
    let user = req.sender()?;
    backup::delete_version(&state.core, user.user_id.as_str(), &req.version)
        .await
        .map_err(backup_error)?;
    Ok(delete_backup_version::v3::Response::new())
}

type Keys = BTreeMap<String, BTreeMap<String, SessionKey>>;

fn session_key(data: &Raw<KeyBackupData>) -> ApiResult<SessionKey> {
    Ok(SessionKey::from_json(&object(data, "key backup data")?)?)
}

fn sessions(map: &BTreeMap<String, Raw<KeyBackupData>>) -> ApiResult<BTreeMap<String, SessionKey>> {
    map.iter()
        .map(|(id, data)| Ok((id.clone(), session_key(data)?)))
        .collect()
}

async fn put(state: &AppState, user: &str, version: &str, keys: &Keys) -> ApiResult<(String, UInt)> {
    let (etag, count) = backup::put_keys(&state.core, user, version, keys)
        .await
        .map_err(backup_error)?;
    Ok((etag, uint(count)))
}

async fn put_all(state: AppState, req: Ruma<add_backup_keys::v3::Request>) -> ApiResult<add_backup_keys::v3::Response> {
    let user = req.sender()?;
    let keys: Keys = req
        .rooms
        .iter()
        .map(|(room, b)| Ok((room.to_string(), sessions(&b.sessions)?)))
        .collect::<ApiResult<_>>()?;
    let (etag, count) = put(&state, user.user_id.as_str(), &req.version, &keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

async fn put_room(
    state: AppState,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<add_backup_keys_for_room::v3::Response> {
    let user = req.sender()?;
    let keys: Keys = BTreeMap::from([(req.room_id.to_string(), sessions(&req.sessions)?)]);
    let (etag, count) = put(&state, user.user_id.as_str(), &req.version, &keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

async fn put_session(
    state: AppState,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<add_backup_keys_for_session::v3::Response> {
    let user = req.sender()?;
    let key = session_key(&req.session_data)?;
    let keys: Keys = BTreeMap::from([(req.room_id.to_string(), BTreeMap::from([(req.session_id.clone(), key)]))]);
    let (etag, count) = put(&state, user.user_id.as_str(), &req.version, &keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

async fn read(state: &AppState, user: &str, version: &str, scope: Scope<'_>) -> ApiResult<Keys> {
    backup::get_keys(&state.core, user, version, scope)
        .await
        .map_err(backup_error)
}

fn raw_sessions(sessions: BTreeMap<String, SessionKey>) -> ApiResult<BTreeMap<String, Raw<KeyBackupData>>> {
    sessions
        .into_iter()
        .map(|(id, k)| Ok((id, raw(&k.to_json())?)))
        .collect()
}

async fn get_all(state: AppState, req: Ruma<get_backup_keys::v3::Request>) -> ApiResult<get_backup_keys::v3::Response> {
    let user = req.sender()?;
    let keys = read(&state, user.user_id.as_str(), &req.version, Scope::All).await?;
    let mut rooms = BTreeMap::new();
    for (room_id, sessions) in keys {
        if let Ok(room_id) = OwnedRoomId::try_from(room_id) {
            rooms.insert(room_id, RoomKeyBackup::new(raw_sessions(sessions)?));
        }
    }
    Ok(get_backup_keys::v3::Response::new(rooms))
}

async fn get_room(
    state: AppState,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<get_backup_keys_for_room::v3::Response> {
    let user = req.sender()?;
    let mut keys = read(
        &state,
        user.user_id.as_str(),
        &req.version,
        Scope::Room(req.room_id.as_str()),
    )
    .await?;
    let sessions = keys.remove(req.room_id.as_str()).unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(raw_sessions(sessions)?))
}

async fn get_session(
    state: AppState,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<get_backup_keys_for_session::v3::Response> {
    let user = req.sender()?;
    let scope = Scope::Session(req.room_id.as_str(), &req.session_id);
    let keys = read(&state, user.user_id.as_str(), &req.version, scope).await?;
    let key = keys
        .into_values()
        .flat_map(|s| s.into_values())
        .next()
        .ok_or_else(|| MatrixError::not_found("No key backed up for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw(&key.to_json())?))
}

async fn delete(state: &AppState, user: &str, version: &str, scope: Scope<'_>) -> ApiResult<(String, UInt)> {
    let (etag, count) = backup::delete_keys(&state.core, user, version, scope)
        .await
        .map_err(backup_error)?;
    Ok((etag, uint(count)))
}

async fn delete_all(
    state: AppState,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<delete_backup_keys::v3::Response> {
    let user = req.sender()?;
    let (etag, count) = delete(&state, user.user_id.as_str(), &req.version, Scope::All).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

async fn delete_room(
    state: AppState,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<delete_backup_keys_for_room::v3::Response> {
    let user = req.sender()?;
    let (etag, count) = delete(
        &state,
        user.user_id.as_str(),
        &req.version,
        Scope::Room(req.room_id.as_str()),
    )
    .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

async fn delete_session(
    state: AppState,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<delete_backup_keys_for_session::v3::Response> {
    let user = req.sender()?;
    let scope = Scope::Session(req.room_id.as_str(), &req.session_id);
    let (etag, count) = delete(&state, user.user_id.as_str(), &req.version, scope).await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count))
}
