//! A thin Client-Server API client: shared-secret registration and JSON requests.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha1::Sha1;

/// One server under test.
#[derive(Clone)]
pub struct Server {
    http: reqwest::Client,
    pub base: String,
    secret: String,
}

/// A registered user with an access token.
#[derive(Clone, Debug)]
pub struct User {
    #[allow(dead_code)]
    pub user_id: String,
    pub token: String,
}

/// A failed request: the HTTP status (0 when none came back) and a short description.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub errcode: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.errcode, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// A short key for counting errors by kind.
    pub fn kind(&self) -> String {
        format!("{} {}", self.status, self.errcode)
    }
}

/// Percent-encodes one path segment (room IDs, transaction IDs).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Server {
    pub fn new(base: &str, secret: &str, request_timeout: Duration) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let host_ok = [
            "http://127.0.0.1:",
            "http://127.0.0.1/",
            "http://localhost:",
            "http://[::1]:",
        ]
        .iter()
        .any(|p| base.starts_with(p) || base == p.trim_end_matches([':', '/']));
        if !host_ok {
            bail!("refusing to load a non-loopback server: {base} (use http://127.0.0.1:PORT)");
        }
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Server {
            http,
            base,
            secret: secret.to_owned(),
        })
    }

    /// One request; a non-2xx answer is an `ApiError`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ApiError {
            status: 0,
            errcode: if e.is_timeout() {
                "TIMEOUT".into()
            } else {
                "TRANSPORT".into()
            },
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ApiError {
            status,
            errcode: "BODY".into(),
            message: e.to_string(),
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let errcode = value["errcode"].as_str().unwrap_or("-").to_owned();
            let mut message = value["error"].as_str().map(str::to_owned).unwrap_or(text);
            message.truncate(200);
            return Err(ApiError {
                status,
                errcode,
                message,
            });
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// Synapse-compatible shared-secret registration (`/_synapse/admin/v1/register`).
    pub async fn register(&self, username: &str) -> Result<User> {
        let path = "/_synapse/admin/v1/register";
        let nonce = self.call(Method::GET, path, None, None).await?;
        let nonce = nonce["nonce"]
            .as_str()
            .ok_or_else(|| anyhow!("no nonce in answer"))?
            .to_owned();
        let password = format!("pw-{username}");
        let mut mac = Hmac::<Sha1>::new_from_slice(self.secret.as_bytes())?;
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(username.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(b"notadmin");
        let mac = hex::encode(mac.finalize().into_bytes());
        let body = json!({ "nonce": nonce, "username": username, "password": password, "admin": false, "mac": mac });
        let resp = self
            .call(Method::POST, path, None, Some(&body))
            .await
            .with_context(|| format!("register {username}"))?;
        Ok(User {
            user_id: resp["user_id"]
                .as_str()
                .ok_or_else(|| anyhow!("no user_id"))?
                .to_owned(),
            token: resp["access_token"]
                .as_str()
                .ok_or_else(|| anyhow!("no access_token"))?
                .to_owned(),
        })
    }

    /// Registers `n` users named `{prefix}{i}`, a few at a time.
    pub async fn register_many(&self, prefix: &str, n: usize) -> Result<Vec<User>> {
        stream::iter(0..n)
            .map(|i| {
                let name = format!("{prefix}{i}");
                async move { self.register(&name).await }
            })
            .buffered(8)
            .try_collect()
            .await
    }

    pub async fn create_room(&self, user: &User, name: &str) -> Result<String> {
        let body = json!({ "preset": "public_chat", "name": name });
        let resp = self.post("/_matrix/client/v3/createRoom", &user.token, &body).await?;
        Ok(resp["room_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no room_id"))?
            .to_owned())
    }

    pub async fn join(&self, user: &User, room_id: &str) -> Result<(), ApiError> {
        self.post(
            &format!("/_matrix/client/v3/join/{}", seg(room_id)),
            &user.token,
            &json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Joins a room by ID through other servers (`?via=`): a join over federation when this
    /// server is not in the room yet.
    pub async fn join_via(&self, user: &User, room_id: &str, via: &[&str]) -> Result<(), ApiError> {
        let query: Vec<String> = via.iter().map(|v| format!("via={}", seg(v))).collect();
        self.post(
            &format!("/_matrix/client/v3/join/{}?{}", seg(room_id), query.join("&")),
            &user.token,
            &json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Sends one text message; returns the event ID.
    pub async fn send_text(&self, user: &User, room_id: &str, txn: &str, body: &str) -> Result<String, ApiError> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            seg(room_id),
            seg(txn)
        );
        let resp = self
            .put(&path, &user.token, &json!({ "msgtype": "m.text", "body": body }))
            .await?;
        resp["event_id"].as_str().map(str::to_owned).ok_or_else(|| ApiError {
            status: 200,
            errcode: "NO_EVENT_ID".into(),
            message: "send answered without event_id".into(),
        })
    }

    /// GET /sync with query parameters (already encoded).
    pub async fn sync(&self, user: &User, query: &str) -> Result<Value, ApiError> {
        self.get(&format!("/_matrix/client/v3/sync?{query}"), &user.token).await
    }
}

/// Percent-encodes a query value.
pub fn q(s: &str) -> String {
    seg(s)
}
