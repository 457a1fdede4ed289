//! A Synapse homeserver (from PyPI, `matrix-synapse`) run by a test on loopback, to federate
//! with weft servers from `harness_federation`. `.ci/run` installs it into a virtualenv and
//! names that virtualenv's Python in `WEFT_TEST_SYNAPSE`; without it the tests that need
//! Synapse say loudly that they were skipped.
//!
//! Synapse serves federation and its key server over TLS on the port its server name
//! (`127.0.0.1:<port>`) names, with a certificate from the test's `TestCa`, and trusts that CA
//! for its outbound federation (`federation_custom_ca_list`), so both sides verify certificates
//! as in production. Its IP range blocklist is emptied (it refuses loopback by default), it
//! asks no key notary, and its client API (with the admin API that registers users with the
//! shared secret) is on a second, plain listener. Everything it writes (SQLite database, media,
//! log) is in a temporary directory; the process is killed when the `Synapse` is dropped, and
//! if the test is failing then, the tail of Synapse's log is printed.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{harness::Client, harness_federation::TestCa};

/// The environment variable naming the Python of a virtualenv with Synapse installed.
pub const SYNAPSE_ENV: &str = "WEFT_TEST_SYNAPSE";

const SHARED_SECRET: &str = "synapse-test-shared-secret";

/// How long Synapse gets to answer after it was started (it creates its schema first).
const STARTUP: Duration = Duration::from_secs(90);

/// The Python that runs Synapse, or `None` after saying loudly that the test is skipped.
pub fn synapse_python() -> Option<PathBuf> {
    match std::env::var_os(SYNAPSE_ENV) {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ => {
            eprintln!(
                "!!! SKIPPED: {SYNAPSE_ENV} is not set (the Python of a virtualenv with matrix-synapse, \
                 as .ci/run installs it): this Synapse interop test did not run !!!"
            );
            None
        }
    }
}

/// A running Synapse, killed on drop.
pub struct Synapse {
    child: Child,
    /// `127.0.0.1:<federation port>`: its federation listener.
    pub server_name: String,
    /// The plain client (and admin) listener.
    pub client_addr: SocketAddr,
    dir: PathBuf,
}

impl Synapse {
    /// Starts Synapse with the Python of `python`'s virtualenv and waits until it answers.
    pub async fn start(python: &Path, ca: &TestCa) -> Synapse {
        let dir = std::env::temp_dir().join(format!("weft-synapse-{}", weft_core::util::random_string(12)));
        std::fs::create_dir_all(dir.join("media")).unwrap();
        let (cert, key) = ca.issue(&["127.0.0.1"], &dir);
        // Synapse's key file has the format weft's has.
        weft_core::signing_key::load_or_create(&dir.join("signing.key")).expect("Synapse signing key");
        std::fs::write(dir.join("log.yaml"), log_config(&dir)).unwrap();
        // The ports are chosen before Synapse binds them, so another process may take one in
        // between: a Synapse that exits while starting is tried again on new ports.
        let mut last_failure = String::new();
        for _attempt in 1..=3 {
            let federation_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let client_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let server_name = federation_addr.to_string();
            let config = homeserver_config(&dir, &server_name, federation_addr, client_addr, ca, &cert, &key);
            std::fs::write(
                dir.join("homeserver.yaml"),
                // YAML is a superset of JSON.
                serde_json::to_string_pretty(&config).unwrap(),
            )
            .unwrap();
            let stdio = std::fs::File::create(dir.join("stdio.log")).unwrap();
            let child = Command::new(python)
                .args(["-m", "synapse.app.homeserver", "-c"])
                .arg(dir.join("homeserver.yaml"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(stdio.try_clone().unwrap())
                .stderr(stdio)
                .spawn()
                .unwrap_or_else(|e| panic!("{SYNAPSE_ENV}={}: cannot run it: {e}", python.display()));
            let mut synapse = Synapse {
                child,
                server_name,
                client_addr,
                dir: dir.clone(),
            };
            match synapse.wait_until_up().await {
                Ok(()) => return synapse,
                Err(failure) => {
                    last_failure = failure;
                    // The next attempt uses the same directory: the failed process is stopped
                    // here, not dropped (which would remove it).
                    let _ = synapse.child.kill();
                    let _ = synapse.child.wait();
                    std::mem::forget(synapse);
                }
            }
        }
        panic!("Synapse did not start: {last_failure}");
    }

    /// Polls the client API until it answers; `Err` when the process exited first.
    async fn wait_until_up(&mut self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let url = format!("http://{}/_matrix/client/versions", self.client_addr);
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("Synapse exited with {status}\n{}", self.log_tail(60)));
            }
            if let Ok(res) = http.get(&url).timeout(Duration::from_secs(2)).send().await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("Synapse did not answer within {STARTUP:?}\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A client of Synapse's client API, not logged in.
    pub fn client(&self) -> Client {
        Client {
            base: format!("http://{}", self.client_addr),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Registers `localpart` with the shared secret (`/_synapse/admin/v1/register`) and answers
    /// a client logged in as them.
    pub async fn register(&self, localpart: &str) -> Client {
        use hmac::{Hmac, Mac};
        let client = self.client();
        let (status, body) = client.get("/_synapse/admin/v1/register").await;
        assert_eq!(status, 200, "Synapse's registration nonce: {body}");
        let nonce = body["nonce"].as_str().unwrap().to_owned();
        let password = format!("password-{localpart}");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
        mac.update(format!("{nonce}\0{localpart}\0{password}\0notadmin").as_bytes());
        let mac = hex::encode(mac.finalize().into_bytes());
        let (status, body) = client
            .post(
                "/_synapse/admin/v1/register",
                json!({ "nonce": nonce, "username": localpart, "password": password, "admin": false, "mac": mac }),
            )
            .await;
        assert_eq!(status, 200, "registering {localpart} on Synapse: {body}");
        client.with_token(body["access_token"].as_str().unwrap())
    }

    /// `@localpart:<server name>`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// The last `lines` lines of Synapse's log and of its standard output and error.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "----- Synapse's homeserver.log (last {lines} lines) -----\n{}\n----- Synapse's stdout/stderr -----\n{}\n----- (all in {}) -----",
            tail("homeserver.log"),
            tail("stdio.log"),
            self.dir.display()
        )
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        // Only the process this harness started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Kept for a closer look.
            eprintln!("{}", self.log_tail(200));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// Python logging's configuration: everything at INFO (federation at DEBUG) into
/// `homeserver.log`.
fn log_config(dir: &Path) -> String {
    serde_json::to_string_pretty(&json!({
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": dir.join("homeserver.log"),
                "encoding": "utf8"
            }
        },
        "loggers": {
            "synapse.federation": { "level": "DEBUG" },
            "synapse.handlers.federation": { "level": "DEBUG" },
            "synapse.handlers.federation_event": { "level": "DEBUG" },
            "synapse.storage.SQL": { "level": "INFO" }
        },
        "root": { "level": "INFO", "handlers": ["file"] },
        "disable_existing_loggers": false
    }))
    .unwrap()
}

fn homeserver_config(
    dir: &Path,
    server_name: &str,
    federation_addr: SocketAddr,
    client_addr: SocketAddr,
    ca: &TestCa,
    cert: &Path,
    key: &Path,
) -> Value {
    let unlimited = json!({ "per_second": 100000, "burst_count": 100000 });
    let mut config = json!({
        "server_name": server_name,
        "pid_file": dir.join("homeserver.pid"),
        "public_baseurl": format!("http://{client_addr}/"),
        "listeners": [
            {
                "port": federation_addr.port(),
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": true,
                "resources": [{ "names": ["federation", "keys"], "compress": false }]
            },
            {
                "port": client_addr.port(),
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": false,
                "resources": [{ "names": ["client"], "compress": false }]
            }
        ],
        "tls_certificate_path": cert,
        "tls_private_key_path": key,
        "federation_verify_certificates": true,
        "federation_custom_ca_list": [ca.pem_path()],
        // Loopback is in Synapse's default blocklist.
        "ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.0/8"],
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "database": { "name": "sqlite3", "args": { "database": dir.join("homeserver.db") } },
        "log_config": dir.join("log.yaml"),
        "media_store_path": dir.join("media"),
        "signing_key_path": dir.join("signing.key"),
        "registration_shared_secret": SHARED_SECRET,
        "enable_registration": false,
        "report_stats": false,
        "enable_metrics": false,
        "bcrypt_rounds": 4,
        // A send that fails once on a loaded test machine (a timeout, a server still starting)
        // would otherwise keep Synapse from trying that server again for ten minutes, longer
        // than any test waits; weft's own sends back off from 5 s.
        "federation": {
            "destination_min_retry_interval": 500,
            "destination_retry_multiplier": 1.5,
            "destination_max_retry_interval": "5s"
        },
        "rc_federation": {
            "window_size": 1000, "sleep_limit": 100000, "sleep_delay": 1,
            "reject_limit": 100000, "concurrent": 100000
        },
        "rc_login": { "address": unlimited, "account": unlimited, "failed_attempts": unlimited },
        "rc_joins": { "local": unlimited, "remote": unlimited },
        "rc_invites": { "per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited },
        "rc_presence": { "per_user": unlimited },
    });
    for key in [
        "rc_message",
        "rc_registration",
        "rc_joins_per_room",
        "rc_admin_redaction",
        "rc_third_party_invite",
        "rc_room_creation",
        "rc_profile",
        "rc_user_directory",
        "rc_key_requests",
    ] {
        config[key] = unlimited.clone();
    }
    config
}
