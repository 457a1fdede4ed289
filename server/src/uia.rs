//! User-interactive authentication: the stages an endpoint demands, sessions that remember
//! completed stages across requests, and the 401 challenges clients follow.

use ruma::api::client::uiaa::{AuthData, UserIdentifier};
use serde_json::json;
use weft_core::{
    accounts,
    storage::{registration_tokens, uia},
    util::{hash_token, random_string},
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
};

pub const PASSWORD: &str = "m.login.password";
pub const DUMMY: &str = "m.login.dummy";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// What a completed UIA tells the endpoint.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token used, to be consumed when the account is created.
    pub registration_token: Option<String>,
    /// The completed registration session, kept to remember the account it creates.
    pub registration_session: Option<String>,
}

/// Runs one UIA step of `req`, whose `auth` field is `auth`. `user_id` is the authenticated
/// user for endpoints that re-authenticate an existing account (password stage checks that
/// user's password).
pub async fn check<T>(
    state: &AppState,
    req: &Ruma<T>,
    auth: Option<&AuthData>,
    flows: &[&[&str]],
    user_id: Option<&str>,
) -> ApiResult<Completed> {
    let operation = operation(req, user_id);
    // A registration remembers what its first request asked for (see `registration_params`).
    let params = user_id.is_none().then(|| {
        let mut body = req.json_body.clone().unwrap_or_else(|| json!({}));
        if let Some(object) = body.as_object_mut() {
            object.remove("auth");
        }
        body.to_string()
    });
    let Some(auth) = auth else {
        let session = new_session(state, user_id, &operation, params.as_deref()).await?;
        return Err(challenge(flows, &session, &[], None));
    };
    let session_id = match auth.session() {
        Some(s) => s.to_owned(),
        None => new_session(state, user_id, &operation, params.as_deref()).await?,
    };
    let Some(session) = uia::get(&state.db, &session_id).await? else {
        return Err(MatrixError::not_found("Unknown UIA session").with_status(http::StatusCode::BAD_REQUEST));
    };
    if session.user_id.as_deref() != user_id {
        return Err(MatrixError::forbidden("UIA session belongs to another user"));
    }
    // Otherwise a password typed to delete one device would delete another (or several).
    if session.operation.as_deref() != Some(operation.as_str()) {
        return Err(MatrixError::forbidden(
            "Requested operation has changed during the UI authentication session",
        ));
    }
    let mut completed = session.completed.clone();
    let mut result = Completed::default();

    let stage_error = match auth {
        AuthData::Dummy(_) => {
            completed.push(DUMMY.to_owned());
            None
        }
        // Another account's password never authenticates this one: refused outright, as
        // Synapse does, rather than offered another try.
        AuthData::Password(p)
            if matches!((&p.identifier, user_id), (UserIdentifier::Matrix(id), Some(expected))
                if crate::api::client::session::qualify_user(state, &id.user) != expected) =>
        {
            return Err(MatrixError::forbidden("The password stage names another user"));
        }
        AuthData::Password(p) => match password_stage(state, &p.identifier, &p.password, user_id).await? {
            true => {
                completed.push(PASSWORD.to_owned());
                None
            }
            false => Some(MatrixError::forbidden("Invalid username or password")),
        },
        AuthData::RegistrationToken(t) => {
            if registration_tokens::is_valid(&state.db, &t.token).await? {
                completed.push(REGISTRATION_TOKEN.to_owned());
                result.registration_token = Some(t.token.clone());
                None
            } else {
                Some(MatrixError::unauthorized("Invalid registration token"))
            }
        }
        // Acknowledging the fallback page re-checks what the session has completed.
        AuthData::FallbackAcknowledgement(_) => None,
        other => Some(
            MatrixError::unrecognized(format!(
                "Unsupported auth type {}",
                other.auth_type().map(|t| t.to_string()).unwrap_or_default()
            ))
            .with_status(http::StatusCode::BAD_REQUEST),
        ),
    };
    completed.dedup();
    if let Some(err) = stage_error {
        return Err(challenge(flows, &session_id, &completed, Some(err)));
    }
    let done = flows
        .iter()
        .any(|flow| flow.iter().all(|stage| completed.iter().any(|c| c == stage)));
    // A completed registration session stays: the account it creates is recorded on it, so
    // that the same request repeated (its answer lost) is answered with that account.
    let keep = !done || user_id.is_none();
    let mut tx = state.db.write().await?;
    if keep {
        uia::set_completed(&mut tx, &session_id, &completed).await?;
    } else {
        uia::delete(&mut tx, &session_id).await?;
    }
    tx.commit().await?;
    if done {
        if user_id.is_none() {
            result.registration_session = Some(session_id);
        }
        Ok(result)
    } else {
        Err(challenge(flows, &session_id, &completed, None))
    }
}

/// The account a completed registration's session created, when `auth` names such a
/// session that is at most `REGISTRATION_REPLAY_MS` old.
pub async fn registered_account(state: &AppState, auth: Option<&AuthData>) -> ApiResult<Option<String>> {
    let Some(session_id) = auth.and_then(AuthData::session) else {
        return Ok(None);
    };
    Ok(uia::get(&state.db, session_id)
        .await?
        .filter(|s| s.user_id.is_none() && s.created_ts > weft_core::util::now_ms() - REGISTRATION_REPLAY_MS)
        .and_then(|s| s.registered_user_id))
}

/// The body of the request that started the registration session `auth` names (less
/// `auth`): clients may send only `auth` in later stages, and the registration then takes the
/// username, password and login options from the first request, as Synapse does.
pub async fn registration_params(state: &AppState, auth: Option<&AuthData>) -> ApiResult<Option<serde_json::Value>> {
    let Some(session_id) = auth.and_then(AuthData::session) else {
        return Ok(None);
    };
    Ok(uia::get(&state.db, session_id)
        .await?
        .filter(|s| s.user_id.is_none())
        .and_then(|s| s.params)
        .and_then(|p| serde_json::from_str(&p).ok()))
}

/// How long a completed registration can be repeated: Synapse keeps UIA sessions for 48 hours.
const REGISTRATION_REPLAY_MS: i64 = 48 * 3600 * 1000;

/// What a session authorises: a hash of the request's method, path and body without `auth`
/// (which changes from stage to stage). An absent body counts as `{}`; serde_json's maps are
/// sorted, so the serialisation does not depend on the client's key order.
///
/// Registration (no `user_id`) binds method and path only, as Synapse does: clients change its
/// body between stages (matrix-js-sdk adds `initial_device_display_name`), and its session
/// authorises nothing about an existing account; the completing request is checked on its own.
fn operation<T>(req: &Ruma<T>, user_id: Option<&str>) -> String {
    let mut body = match user_id {
        Some(_) => req.json_body.clone().unwrap_or_else(|| json!({})),
        None => json!({}),
    };
    if let Some(object) = body.as_object_mut() {
        object.remove("auth");
    }
    hash_token(&format!("{}\n{}\n{body}", req.http_method, req.http_path))
}

async fn new_session(
    state: &AppState,
    user_id: Option<&str>,
    operation: &str,
    params: Option<&str>,
) -> ApiResult<String> {
    let session_id = random_string(24);
    let mut tx = state.db.write().await?;
    uia::create(&mut tx, &session_id, user_id, operation, params).await?;
    tx.commit().await?;
    Ok(session_id)
}

async fn password_stage(
    state: &AppState,
    identifier: &UserIdentifier,
    password: &str,
    expected: Option<&str>,
) -> ApiResult<bool> {
    let UserIdentifier::Matrix(id) = identifier else {
        return Ok(false);
    };
    let user_id = crate::api::client::session::qualify_user(state, &id.user);
    if expected.is_some_and(|e| e != user_id) {
        return Ok(false);
    }
    match accounts::check_password(&state.db, &user_id, password).await {
        Ok(ok) => Ok(ok),
        Err(weft_core::Error::UserDeactivated) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn challenge(flows: &[&[&str]], session: &str, completed: &[String], error: Option<MatrixError>) -> MatrixError {
    let mut info = json!({
        "flows": flows.iter().map(|f| json!({ "stages": f })).collect::<Vec<_>>(),
        "params": {},
        "session": session,
        "completed": completed,
    });
    if let Some(err) = error {
        info["errcode"] = err.errcode.into();
        info["error"] = err.message.into();
    }
    MatrixError::uia(info)
}
