//! Test harness: real weft servers on loopback ports with fresh databases, on SQLite and on
//! PostgreSQL (`WEFT_TEST_POSTGRES`, a URL with rights to create databases).

use std::{net::SocketAddr, path::PathBuf};

use reqwest::Method;
use serde_json::{json, Value};
use weft::{
    config::{Config, ListenerConfig},
    server::{self, Running},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const SHARED_SECRET: &str = "test-shared-secret";

/// A database that outlives server restarts within one test.
pub struct TestDb {
    pub url: String,
    pub dir: PathBuf,
    admin_url: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so loudly) when PostgreSQL is not configured.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let dir = std::env::temp_dir().join(format!("weft-test-{}", weft_core::util::random_string(12)));
        std::fs::create_dir_all(&dir).unwrap();
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite://{}/weft.db", dir.display()),
                dir,
                admin_url: None,
            }),
            Backend::Postgres => {
                let Ok(base) = std::env::var("WEFT_TEST_POSTGRES") else {
                    eprintln!("!!! WEFT_TEST_POSTGRES is not set: the PostgreSQL half of this test was SKIPPED !!!");
                    return None;
                };
                let name = format!("weft_test_{}", weft_core::util::random_string(12).to_lowercase());
                let db = weft_core::Db::connect(&base, 1)
                    .await
                    .expect("connect to WEFT_TEST_POSTGRES");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(db.pool())
                    .await
                    .expect("create test database");
                db.close().await;
                let url = replace_db_name(&base, &name);
                Some(TestDb {
                    url,
                    dir,
                    admin_url: Some((base, name)),
                })
            }
        }
    }

    pub async fn drop_db(&self) {
        if let Some((base, name)) = &self.admin_url {
            if let Ok(db) = weft_core::Db::connect(base, 1).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(db.pool())
                    .await;
                db.close().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.server_name = "weft.test".into();
    config.public_baseurl = "http://127.0.0.1/".into();
    config.database.url = db.url.clone();
    config.database.max_connections = Some(8);
    config.signing_key_path = db.dir.join("signing.key");
    config.media.path = db.dir.join("media");
    config.listeners = vec![ListenerConfig {
        address: [127, 0, 0, 1].into(),
        port: 0,
        apis: vec![
            weft::config::Api::Client,
            weft::config::Api::Media,
            weft::config::Api::Admin,
        ],
        tls_cert: None,
        tls_key: None,
    }];
    config.registration.enabled = true;
    config.registration.shared_secret = SHARED_SECRET.into();
    config.rate_limits.enabled = false;
    config.log.level = "warn".into();
    config
}

pub struct TestServer {
    pub db: TestDb,
    pub config: Config,
    pub running: Option<Running>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestServer> {
        let db = TestDb::new(backend).await?;
        let mut config = test_config(&db);
        tweak(&mut config);
        let running = server::start(config.clone()).await.expect("server starts");
        let addr = running.addrs[0];
        Some(TestServer {
            db,
            config,
            running: Some(running),
            addr,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client {
            base: self.url(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the server and starts it again on the same database (and a new port).
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let running = server::start(self.config.clone()).await.expect("server restarts");
        self.addr = running.addrs[0];
        self.running = Some(running);
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.db.drop_db().await;
    }

    /// Registers a user through open registration (UIA with m.login.dummy) and returns a
    /// client logged in as them.
    pub async fn register(&self, localpart: &str, password: &str) -> Client {
        self.client().register(localpart, password).await
    }
}

/// A minimal Matrix HTTP client for tests.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    /// Registers a user at this client's server through open registration (UIA with
    /// m.login.dummy) and returns a client logged in as them.
    pub async fn register(&self, localpart: &str, password: &str) -> Client {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                json!({"username": localpart, "password": password}),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        let session = body["session"].as_str().unwrap().to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                json!({"username": localpart, "password": password, "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        self.with_token(body["access_token"].as_str().unwrap())
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: Method, path: &str, body: &'static str) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::DELETE, path, Some(body)).await
    }
}

/// Defines one test per backend: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::harness::Backend::Postgres).await
            }
        }
    };
}
