//! `/register` and `/register/available`.

use ruma::api::client::account::{get_username_availability, register, register::RegistrationKind};
use serde_json::{json, Value};
use weft_core::{
    accounts::{self, SessionRequest},
    storage::{registration_tokens, users},
    util::random_string,
};

use crate::{
    error::{ApiResult, MatrixError},
    ruma_wrapper::Ruma,
    state::AppState,
    uia,
};

pub async fn register(state: AppState, req: Ruma<register::v3::Request>) -> ApiResult<Value> {
    let login_type = req.json_body.as_ref().and_then(|b| b["type"].as_str());
    if let Some(service) = req.user.as_ref().and_then(|u| u.appservice.clone()) {
        if login_type != Some(APPSERVICE_LOGIN) {
            return Err(MatrixError::bad_json(format!(
                "An application service registers users with type {APPSERVICE_LOGIN}"
            )));
        }
        return register_for_appservice(&state, &req, &service).await;
    }
    if login_type == Some(APPSERVICE_LOGIN) {
        return Err(MatrixError::missing_token(format!(
            "{APPSERVICE_LOGIN} needs the application service's as_token"
        )));
    }
    let reg = &state.config.registration;
    let is_guest = req.kind == RegistrationKind::Guest;
    if is_guest && !reg.allow_guests {
        return Err(MatrixError::forbidden("Guest access is disabled"));
    }
    if !is_guest && !reg.enabled {
        return Err(MatrixError::forbidden("Registration has been disabled"));
    }

    let params = Params::of(&state, &req).await?;
    let localpart = match (&params.username, is_guest) {
        // Usernames are case-insensitive: Synapse, and clients, send capitals expecting them
        // lowered.
        (Some(name), false) => name.to_lowercase(),
        _ => format!(
            "{}{}",
            if is_guest { "guest-" } else { "" },
            random_string(12).to_lowercase()
        ),
    };
    let session = (!params.inhibit_login).then(|| SessionRequest {
        device_id: params.device_id.clone(),
        display_name: params.initial_device_display_name.clone(),
        ip: req.ip.clone(),
        refreshable_lifetime_ms: params
            .refresh_token
            .then(|| state.config.access_token_lifetime.as_millis() as i64),
    });
    if !is_guest {
        if let Some(user_id) = uia::registered_account(&state, req.auth.as_ref()).await? {
            return repeated(&state, &user_id, req.password.as_deref(), session).await;
        }
    }

    let user_id = accounts::user_id_for(&localpart, &state.config.server_name)?;
    if users::get(&state.db, &user_id).await?.is_some() {
        return Err(MatrixError::user_in_use("User ID already taken"));
    }
    refuse_exclusive(&state, &user_id)?;

    // Guests skip UIA; everyone else completes the configured flow.
    let mut uia_session = None;
    if !is_guest {
        let flow: &[&str] = if reg.require_token {
            &[uia::REGISTRATION_TOKEN]
        } else {
            &[uia::DUMMY]
        };
        let done = uia::check(&state, &req, req.auth.as_ref(), &[flow], None).await?;
        uia_session = done.registration_session;
        if let Some(token) = done.registration_token {
            let mut tx = state.db.write().await?;
            let consumed = registration_tokens::consume(&mut tx, &token).await?;
            tx.commit().await?;
            if !consumed {
                return Err(MatrixError::unauthorized("Registration token has no uses left"));
            }
        }
    }

    let issued = accounts::register(
        &state.db,
        accounts::NewAccount {
            user_id: &user_id,
            password: params.password.as_deref(),
            is_guest,
            displayname: Some(&localpart),
            session,
            uia_session: uia_session.as_deref(),
            ..Default::default()
        },
    )
    .await?;

    Ok(registered(&user_id, issued))
}

/// The registration type of an appservice's users.
const APPSERVICE_LOGIN: &str = "m.login.application_service";

/// A user ID that an appservice claims exclusively is its alone to register.
fn refuse_exclusive(state: &AppState, user_id: &str) -> ApiResult<()> {
    match state.core.appservices.exclusive_user_owner(user_id) {
        Some(_) => Err(MatrixError::exclusive(format!(
            "{user_id} is reserved by an application service"
        ))),
        None => Ok(()),
    }
}

/// `m.login.application_service`: an appservice registers a user of its namespaces, with no
/// password and no UIA, whether or not open registration is on.
async fn register_for_appservice(
    state: &AppState,
    req: &Ruma<register::v3::Request>,
    service: &weft_core::appservice::AppService,
) -> ApiResult<Value> {
    let params = Params::of(state, req).await?;
    let Some(username) = params.username.as_deref() else {
        return Err(MatrixError::missing_param("An application service must name the user"));
    };
    let user_id = accounts::user_id_for(&username.to_lowercase(), &state.config.server_name)?;
    if !service.is_user_in_namespace(&user_id) {
        return Err(MatrixError::exclusive(format!(
            "{user_id} is not in the application service's namespace"
        )));
    }
    if let Some(owner) = state.core.appservices.exclusive_user_owner(&user_id) {
        if owner.id != service.id {
            return Err(MatrixError::exclusive(format!(
                "{user_id} is reserved by another application service"
            )));
        }
    }
    let session = (!params.inhibit_login).then(|| SessionRequest {
        device_id: params.device_id.clone(),
        display_name: params.initial_device_display_name.clone(),
        ip: req.ip.clone(),
        refreshable_lifetime_ms: None,
    });
    let issued = accounts::register(
        &state.db,
        accounts::NewAccount {
            user_id: &user_id,
            session,
            ..Default::default()
        },
    )
    .await?;
    Ok(registered(&user_id, issued))
}

/// What a registration asks for: the request's fields, and for those it leaves out, the ones
/// the request that started its UIA session sent (clients may send only `auth` later on).
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
}

impl Params {
    async fn of(state: &AppState, req: &Ruma<register::v3::Request>) -> ApiResult<Params> {
        let mut merged = uia::registration_params(state, req.auth.as_ref())
            .await?
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        if let Some(body) = req.json_body.as_ref().and_then(Value::as_object) {
            for (key, value) in body {
                if key != "auth" {
                    merged[key] = value.clone();
                }
            }
        }
        serde_json::from_value(merged).map_err(|e| MatrixError::bad_json(format!("Invalid registration: {e}")))
    }
}

/// A completed registration repeated with its UIA session (the client lost the answer): the
/// account it created, logged in again as asked. The password, when sent, must be the
/// account's: a request that names another password is not the one repeated. (A repeat with
/// `auth` alone gets the account, as with Synapse: the session ID is the client's secret, and
/// it is honoured for 48 hours.)
async fn repeated(
    state: &AppState,
    user_id: &str,
    password: Option<&str>,
    session: Option<SessionRequest>,
) -> ApiResult<Value> {
    if let Some(password) = password {
        if !accounts::check_password(&state.db, user_id, password)
            .await
            .unwrap_or(false)
        {
            return Err(MatrixError::forbidden(
                "This registration session belongs to another request",
            ));
        }
    }
    let issued = match session {
        Some(session) => Some(accounts::login(&state.db, user_id, session).await?),
        None => None,
    };
    Ok(registered(user_id, issued))
}

/// The answer to a registration. Built here rather than with ruma's response, which sends
/// `"device_id": null` when `inhibit_login` asked for no session: a client must then see
/// neither an access token nor a device.
fn registered(user_id: &str, session: Option<accounts::Session>) -> Value {
    let mut out = json!({ "user_id": user_id });
    if let Some(s) = session {
        out["access_token"] = json!(s.access_token);
        out["device_id"] = json!(s.device_id);
        if let Some(refresh) = s.refresh_token {
            out["refresh_token"] = json!(refresh);
        }
        if let Some(ms) = s.expires_in_ms {
            out["expires_in_ms"] = json!(ms);
        }
    }
    out
}

pub async fn available(
    state: AppState,
    req: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    if !state.config.registration.enabled {
        return Err(MatrixError::forbidden("Registration has been disabled"));
    }
    let user_id = accounts::user_id_for(&req.username, &state.config.server_name)?;
    if users::get(&state.db, &user_id).await?.is_some() {
        return Err(MatrixError::user_in_use("User ID already taken"));
    }
    refuse_exclusive(&state, &user_id)?;
    Ok(get_username_availability::v3::Response::new(true))
}
