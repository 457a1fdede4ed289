//! Matrix errors: every failure a client sees is `{"errcode", "error"}` with the right status.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

#[derive(Debug)]
pub struct MatrixError {
    pub status: StatusCode,
    pub errcode: std::borrow::Cow<'static, str>,
    pub message: String,
    /// Extra top-level fields (`soft_logout`, `retry_after_ms`, UIA's `flows`...).
    pub extra: Option<Value>,
}

pub type ApiResult<T> = Result<T, MatrixError>;

macro_rules! constructors {
    ($($name:ident => $status:ident, $code:literal;)*) => {
        impl MatrixError {
            $(pub fn $name(message: impl Into<String>) -> MatrixError {
                MatrixError { status: StatusCode::$status, errcode: std::borrow::Cow::Borrowed($code), message: message.into(), extra: None }
            })*
        }
    };
}

constructors! {
    forbidden => FORBIDDEN, "M_FORBIDDEN";
    not_found => NOT_FOUND, "M_NOT_FOUND";
    unrecognized => NOT_FOUND, "M_UNRECOGNIZED";
    bad_json => BAD_REQUEST, "M_BAD_JSON";
    not_json => BAD_REQUEST, "M_NOT_JSON";
    invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
    missing_param => BAD_REQUEST, "M_MISSING_PARAM";
    missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
    unauthorized => UNAUTHORIZED, "M_UNAUTHORIZED";
    user_in_use => BAD_REQUEST, "M_USER_IN_USE";
    invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
    too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
    user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
    guest_access_forbidden => FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN";
    unknown => INTERNAL_SERVER_ERROR, "M_UNKNOWN";
    unsupported_room_version => BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION";
    room_in_use => BAD_REQUEST, "M_ROOM_IN_USE";
    invalid_room_state => BAD_REQUEST, "M_INVALID_ROOM_STATE";
    bad_alias => BAD_REQUEST, "M_BAD_ALIAS";
    unknown_pos => BAD_REQUEST, "M_UNKNOWN_POS";
    user_suspended => FORBIDDEN, "M_USER_SUSPENDED";
    exclusive => BAD_REQUEST, "M_EXCLUSIVE";
}

impl MatrixError {
    pub fn unknown_token(soft_logout: bool) -> MatrixError {
        MatrixError {
            status: StatusCode::UNAUTHORIZED,
            errcode: "M_UNKNOWN_TOKEN".into(),
            message: "Unknown or expired access token".into(),
            extra: Some(json!({ "soft_logout": soft_logout })),
        }
    }

    pub fn unrecognized_method() -> MatrixError {
        MatrixError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            ..MatrixError::unrecognized("Unrecognized request method")
        }
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> MatrixError {
        MatrixError {
            status: StatusCode::TOO_MANY_REQUESTS,
            errcode: "M_LIMIT_EXCEEDED".into(),
            message: "Too many requests".into(),
            extra: Some(json!({ "retry_after_ms": retry_after_ms })),
        }
    }

    /// A 401 carrying user-interactive-auth state (`flows`, `session`, `completed`...).
    pub fn uia(info: Value) -> MatrixError {
        MatrixError {
            status: StatusCode::UNAUTHORIZED,
            errcode: "".into(),
            message: String::new(),
            extra: Some(info),
        }
    }

    /// Another server's refusal passed on as it came (its status and code), for a request
    /// this server made on a client's behalf.
    pub fn from_remote(status: StatusCode, errcode: String, message: impl Into<String>) -> MatrixError {
        MatrixError {
            status,
            errcode: errcode.into(),
            message: message.into(),
            extra: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> MatrixError {
        self.status = status;
        self
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        if self.errcode.is_empty() {
            // A user-interactive-auth challenge: the body is the UIA state alone.
            return (self.status, Json(self.extra.unwrap_or_default())).into_response();
        }
        let mut body = json!({ "errcode": self.errcode, "error": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<weft_core::Error> for MatrixError {
    fn from(err: weft_core::Error) -> MatrixError {
        use weft_core::Error as E;
        match err {
            E::Forbidden(m) => MatrixError::forbidden(m),
            E::NotFound(m) => MatrixError::not_found(m),
            E::InvalidParam(m) => MatrixError::invalid_param(m),
            E::BadJson(m) => MatrixError::bad_json(m),
            E::UserInUse => MatrixError::user_in_use("User ID already taken"),
            E::InvalidUsername(m) => MatrixError::invalid_username(m),
            E::UnknownToken { soft_logout } => MatrixError::unknown_token(soft_logout),
            E::UnsupportedRoomVersion(v) => {
                MatrixError::unsupported_room_version(format!("Room version {v} is not supported"))
            }
            E::TooLarge(m) => MatrixError::too_large(m),
            E::RoomInUse(m) => MatrixError::room_in_use(m),
            E::UnknownPos => MatrixError::unknown_pos("Unknown position; start a new sliding sync connection"),
            E::UserDeactivated => MatrixError::user_deactivated("This account has been deactivated"),
            // Synapse's: the client logs out softly, keeping its keys for when it is unlocked.
            E::UserLocked => MatrixError {
                status: StatusCode::UNAUTHORIZED,
                errcode: "M_USER_LOCKED".into(),
                message: "This account has been locked".into(),
                extra: Some(json!({ "soft_logout": true })),
            },
            E::UserSuspended => MatrixError::user_suspended("This account is suspended"),
            E::Exclusive(m) => MatrixError::exclusive(m),
            other => {
                tracing::error!(error = %other, "internal error");
                MatrixError::unknown("Internal server error")
            }
        }
    }
}

/// The media repository's errors, as Synapse answers them.
impl From<weft_core::media::MediaError> for MatrixError {
    fn from(err: weft_core::media::MediaError) -> MatrixError {
        let custom = |status, errcode: &'static str, message: String| MatrixError {
            status,
            errcode: errcode.into(),
            message,
            extra: None,
        };
        match err {
            weft_core::media::MediaError::Core(e) => e.into(),
            weft_core::media::MediaError::NotFound(m) => MatrixError::not_found(m),
            weft_core::media::MediaError::Forbidden(m) => MatrixError::forbidden(m),
            weft_core::media::MediaError::TooLarge(m) => MatrixError::too_large(m),
            weft_core::media::MediaError::InvalidParam(m) => MatrixError::invalid_param(m),
            // Synapse's answer to its media upload limits.
            weft_core::media::MediaError::QuotaExceeded(m) => {
                custom(StatusCode::BAD_REQUEST, "M_RESOURCE_LIMIT_EXCEEDED", m)
            }
            weft_core::media::MediaError::TooManyPending(m) => {
                custom(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", m)
            }
            e @ weft_core::media::MediaError::CannotOverwrite => {
                custom(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", e.to_string())
            }
            e @ weft_core::media::MediaError::NotYetUploaded => {
                custom(StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED", e.to_string())
            }
            // The spec's answer when "the server cannot thumbnail the content".
            weft_core::media::MediaError::CannotThumbnail(m) => {
                MatrixError::unknown(m).with_status(StatusCode::BAD_REQUEST)
            }
            weft_core::media::MediaError::Upstream(m) => MatrixError::unknown(m).with_status(StatusCode::BAD_GATEWAY),
            // The spec's answer for content too large for the server to serve.
            weft_core::media::MediaError::RemoteTooLarge(m) => {
                MatrixError::too_large(m).with_status(StatusCode::BAD_GATEWAY)
            }
        }
    }
}
