//! Accounts: registration, passwords, login sessions (device + tokens), logout, deactivation.
//! HTTP handlers call these; every multi-row change happens in one transaction.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};

use crate::{
    storage::{devices, tokens, users},
    util::{hash_token, now_ms, random_device_id, random_string},
    Db, Error, Result,
};

/// A freshly issued login session.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Lifetime of the access token when it expires (refresh tokens requested).
    pub expires_in_ms: Option<i64>,
}

/// How a session should be issued.
#[derive(Clone, Debug, Default)]
pub struct SessionRequest {
    pub device_id: Option<String>,
    pub display_name: Option<String>,
    pub ip: Option<String>,
    /// `Some(lifetime_ms)` when the client asked for a refresh token.
    pub refreshable_lifetime_ms: Option<i64>,
}

/// Argon2id with 7 MiB and 5 passes: one of OWASP's equivalent recommended settings, chosen over
/// 19 MiB / 2 passes because every concurrent hash holds its memory (a registration burst on
/// two cores peaks at 14 MiB instead of 38 MiB). Stored hashes carry their own parameters, so
/// hashes made with other settings still verify.
fn hasher() -> Argon2<'static> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None).expect("valid Argon2 parameters");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashing runs on a few dedicated threads rather than tokio's growing blocking pool: each hash
/// in flight holds its 7 MiB, so the number of threads bounds the memory a burst of
/// registrations or logins can take. One thread per two cores (at least one) keeps a small
/// server's peak low while a hash still takes only tens of milliseconds.
fn run_hashing<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> tokio::sync::oneshot::Receiver<T> {
    type Job = Box<dyn FnOnce() + Send>;
    static QUEUE: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let lanes = (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1);
        for i in 0..lanes {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("weft-hash-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
        }
        std::sync::Mutex::new(tx)
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(job());
    });
    if let Ok(queue) = queue.lock() {
        let _ = queue.send(job);
    }
    result
}

pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    run_hashing(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(Error::internal)
    })
    .await
    .map_err(Error::internal)?
}

pub async fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    run_hashing(move || {
        PasswordHash::new(&hash)
            .map(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Checks a localpart chosen at registration: the spec's allowed characters for new users.
pub fn validate_localpart(localpart: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(Error::InvalidUsername("user ID localpart is empty".into()));
    }
    if !localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(Error::InvalidUsername(
            "user ID may only contain a-z, 0-9, and . _ = - / +".into(),
        ));
    }
    Ok(())
}

/// Builds `@localpart:server_name`, validating the localpart and the total length.
pub fn user_id_for(localpart: &str, server_name: &str) -> Result<String> {
    validate_localpart(localpart)?;
    let user_id = format!("@{localpart}:{server_name}");
    if user_id.len() > 255 {
        return Err(Error::InvalidUsername("user ID is longer than 255 bytes".into()));
    }
    Ok(user_id)
}

/// An account to create.
#[derive(Debug, Default)]
pub struct NewAccount<'a> {
    pub user_id: &'a str,
    pub password: Option<&'a str>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub displayname: Option<&'a str>,
    /// Also logs the account in, returning the new session.
    pub session: Option<SessionRequest>,
    /// The registration's UIA session, which remembers the account in the same transaction.
    pub uia_session: Option<&'a str>,
}

/// Creates an account. With `session`, also logs it in and returns the new session.
pub async fn register(db: &Db, account: NewAccount<'_>) -> Result<Option<Session>> {
    let hash = match account.password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let user_id = account.user_id;
    let mut tx = db.write().await?;
    if !users::insert(
        &mut tx,
        user_id,
        hash.as_deref(),
        account.is_admin,
        account.is_guest,
        account.displayname,
    )
    .await?
    {
        return Err(Error::UserInUse);
    }
    if let Some(uia_session) = account.uia_session {
        crate::storage::uia::set_registered(&mut tx, uia_session, user_id).await?;
    }
    let issued = match account.session {
        Some(req) => Some(issue_session(&mut tx, user_id, req).await?),
        None => None,
    };
    tx.commit().await?;
    Ok(issued)
}

/// Checks a password for `user_id`; deactivated accounts never pass.
pub async fn check_password(db: &Db, user_id: &str, password: &str) -> Result<bool> {
    let Some(user) = users::get(db, user_id).await? else {
        return Ok(false);
    };
    if user.deactivated {
        return Err(Error::UserDeactivated);
    }
    if user.locked {
        return Err(Error::UserLocked);
    }
    Ok(match user.password_hash {
        Some(hash) => verify_password(password, &hash).await,
        None => false,
    })
}

/// Logs in an existing user, creating or reusing the device.
pub async fn login(db: &Db, user_id: &str, req: SessionRequest) -> Result<Session> {
    let mut tx = db.write().await?;
    let session = issue_session(&mut tx, user_id, req).await?;
    tx.commit().await?;
    Ok(session)
}

async fn issue_session(tx: &mut sqlx::AnyConnection, user_id: &str, req: SessionRequest) -> Result<Session> {
    let device_id = req.device_id.unwrap_or_else(random_device_id);
    devices::upsert(
        &mut *tx,
        user_id,
        &device_id,
        req.display_name.as_deref(),
        req.ip.as_deref(),
    )
    .await?;
    // A login with an existing device ID replaces that device's old tokens.
    tokens::delete_device_access(&mut *tx, user_id, &device_id).await?;
    issue_tokens(tx, user_id, &device_id, req.refreshable_lifetime_ms).await
}

async fn issue_tokens(
    tx: &mut sqlx::AnyConnection,
    user_id: &str,
    device_id: &str,
    refreshable_lifetime_ms: Option<i64>,
) -> Result<Session> {
    let access_token = format!("weft_{}", random_string(40));
    let expires_ts = refreshable_lifetime_ms.map(|l| now_ms() + l);
    tokens::insert_access(&mut *tx, &hash_token(&access_token), user_id, device_id, expires_ts).await?;
    let refresh_token = match refreshable_lifetime_ms {
        Some(_) => {
            let token = format!("weftr_{}", random_string(40));
            tokens::insert_refresh(&mut *tx, &hash_token(&token), user_id, device_id).await?;
            Some(token)
        }
        None => None,
    };
    Ok(Session {
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
        access_token,
        refresh_token,
        expires_in_ms: refreshable_lifetime_ms,
    })
}

/// Exchanges a refresh token for a new access/refresh pair; the old pair stops working.
pub async fn refresh(db: &Db, refresh_token: &str, lifetime_ms: i64) -> Result<Session> {
    let mut tx = db.write().await?;
    let Some((user_id, device_id)) = tokens::take_refresh(&mut tx, &hash_token(refresh_token)).await? else {
        return Err(Error::UnknownToken { soft_logout: false });
    };
    tokens::delete_device_access(&mut tx, &user_id, &device_id).await?;
    let session = issue_tokens(&mut tx, &user_id, &device_id, Some(lifetime_ms)).await?;
    tx.commit().await?;
    Ok(session)
}

/// Resolves an access token to its owner; expired tokens report a soft logout.
pub async fn authenticate(db: &Db, access_token: &str) -> Result<tokens::TokenOwner> {
    let owner = tokens::find_access(db, &hash_token(access_token))
        .await?
        .ok_or(Error::UnknownToken { soft_logout: false })?;
    if owner.deactivated {
        return Err(Error::UnknownToken { soft_logout: false });
    }
    if owner.locked {
        return Err(Error::UserLocked);
    }
    if owner.expires_ts.is_some_and(|e| e <= now_ms()) {
        return Err(Error::UnknownToken { soft_logout: true });
    }
    // The caller's span names the user from here on (a request's span: the access log's).
    tracing::Span::current().record("user", tracing::field::display(&owner.user_id));
    Ok(owner)
}

pub async fn logout(db: &Db, user_id: &str, device_id: &str) -> Result<()> {
    let mut tx = db.write().await?;
    devices::delete(&mut tx, user_id, device_id).await?;
    tx.commit().await
}

pub async fn logout_all(db: &Db, user_id: &str) -> Result<()> {
    let mut tx = db.write().await?;
    devices::delete_all_except(&mut tx, user_id, None).await?;
    tx.commit().await
}

/// Sets a new password; unless `keep_devices`, every other device is logged out.
pub async fn change_password(
    db: &Db,
    user_id: &str,
    new_password: &str,
    keep_devices: bool,
    current_device: Option<&str>,
) -> Result<()> {
    let hash = hash_password(new_password).await?;
    let mut tx = db.write().await?;
    users::set_password_hash(&mut tx, user_id, Some(&hash)).await?;
    if !keep_devices {
        devices::delete_all_except(&mut tx, user_id, current_device).await?;
    }
    tx.commit().await
}

/// Deactivates the account: no login, every device and token gone, profile cleared.
pub async fn deactivate(db: &Db, user_id: &str) -> Result<()> {
    let mut tx = db.write().await?;
    users::set_deactivated(&mut tx, user_id).await?;
    devices::delete_all_except(&mut tx, user_id, None).await?;
    tx.commit().await
}
