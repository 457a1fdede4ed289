//! Errors of the core layer. Domain failures carry the Matrix meaning the server reports.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),

    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    BadJson(String),
    #[error("user ID already taken")]
    UserInUse,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("unknown or expired access token")]
    UnknownToken { soft_logout: bool },
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RoomInUse(String),
    #[error("unknown sliding sync position")]
    UnknownPos,
    #[error("user is deactivated")]
    UserDeactivated,
    #[error("this account has been locked")]
    UserLocked,
    #[error("this account is suspended")]
    UserSuspended,
    /// A user ID or alias an application service claims exclusively (M_EXCLUSIVE).
    #[error("{0}")]
    Exclusive(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        // PostgreSQL refuses text with NUL characters (SQLite stores it): the client's input
        // (a path parameter, a string in a body), not the server's fault.
        if let sqlx::Error::Database(db) = &err {
            if db.code().as_deref() == Some(CHARACTER_NOT_IN_REPERTOIRE) {
                return Error::InvalidParam("Text must not contain NUL characters".into());
            }
        }
        Error::Database(err)
    }
}

/// PostgreSQL's SQLSTATE for a NUL character in text.
const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

impl Error {
    pub fn internal(what: impl std::fmt::Display) -> Error {
        Error::Internal(what.to_string())
    }
}
