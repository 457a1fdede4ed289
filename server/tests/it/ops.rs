//! Operations, on the `weft` binary run as a child process (its metrics, log and signals are
//! its own): Prometheus metrics scraped from the metrics listener and parsed with a
//! Prometheus text parser, `/health`, JSON log lines with request IDs, the log level changed
//! without a restart (admin API and SIGHUP), and a graceful SIGTERM under load that loses no
//! acknowledged event and exits 0.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    harness_federation::FederatedServer,
    rooms::{message_ids, send_text, urlencode},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `weft serve` child process with a client listener, a metrics listener and its log (JSON
/// lines) in a file.
struct Weft {
    child: Child,
    base: String,
    metrics: String,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Weft {
    /// Writes the configuration (log level `level`) and starts the server.
    async fn start(db: &TestDb, level: &str) -> Weft {
        let (port, metrics_port) = (free_port(), free_port());
        let config = format!(
            "server_name = \"weft.test\"\npublic_baseurl = \"http://127.0.0.1:{port}/\"\nsigning_key_path = \"{dir}/signing.key\"\n\
             [database]\nurl = \"{url}\"\n\
             [[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\n\
             [[listeners]]\naddress = \"127.0.0.1\"\nport = {metrics_port}\napis = [\"metrics\"]\n\
             [registration]\nenabled = true\n[rate_limits]\nenabled = false\n[media]\npath = \"{dir}/media\"\n\
             [log]\nformat = \"json\"\nlevel = \"{level}\"\n",
            dir = db.dir.display(),
            url = db.url,
        );
        let config_path = db.dir.join("weft.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = db.dir.join("weft.log");
        let weft = Weft {
            child: spawn(&config_path, &log_path),
            base: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            config_path,
            log_path,
        };
        weft.wait_healthy().await;
        weft
    }

    /// Starts the process again (after it exited), appending to the same log.
    async fn restart(&mut self) {
        self.child = spawn(&self.config_path, &self.log_path);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        for _ in 0..400 {
            if reqwest::get(format!("{}/health", self.base))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("weft did not start at {}", self.base);
    }

    fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's PID has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} to {pid}");
    }

    async fn scrape(&self) -> prometheus_parse::Scrape {
        let res = reqwest::get(format!("{}/metrics", self.metrics)).await.unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(without_braces_in_values(l)));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
    }

    /// The log's lines, each parsed as JSON (a line that is not JSON fails the test).
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log_path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    /// The access log's line for a request ID, if it was logged.
    fn access_line(&self, request_id: &str) -> Option<Value> {
        self.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "answered" && l["span"]["request_id"] == request_id)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config_path: &std::path::Path, log_path: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weft")
}

/// A sample line with `{`/`}` inside quoted label values (the servlets' path templates) as
/// `(`/`)`: prometheus-parse's label pattern ends a sample's labels at the first `}`.
fn without_braces_in_values(line: &str) -> String {
    let mut quoted = false;
    let mut escaped = false;
    line.chars()
        .map(|c| {
            let out = match c {
                '{' if quoted => '(',
                '}' if quoted => ')',
                c => c,
            };
            if quoted && c == '\\' && !escaped {
                escaped = true;
                return out;
            }
            if c == '"' && !escaped {
                quoted = !quoted;
            }
            escaped = false;
            out
        })
        .collect()
}

/// The sum of a metric's samples whose labels include `labels` (a histogram counts its
/// observations).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => panic!("{metric} is a summary, not a histogram"),
        })
        .sum()
}

fn has(scrape: &prometheus_parse::Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

/// The room's version, from its create event.
async fn room_version(client: &Client, room: &str) -> String {
    let (status, body) = client
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["room_version"].as_str().unwrap_or("1").to_owned()
}

both_backends!(metrics_count_requests_and_persisted_events, |backend| async move {
    let Some(db) = TestDb::new(backend).await else { return };
    let weft = Weft::start(&db, "info").await;
    let alice = weft.client().register("alice", "pw").await;
    let (status, body) = alice.post("/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let version = room_version(&alice, &room).await;

    // /health answers on the client listener; /metrics only on the metrics listener.
    let res = reqwest::get(format!("{}/health", weft.base)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "OK");
    let res = reqwest::get(format!("{}/metrics", weft.base)).await.unwrap();
    assert_eq!(res.status(), 404, "metrics are not served on the client listener");

    let before = weft.scrape().await;
    for i in 0..3 {
        let (status, body) = send_text(&alice, &room, &format!("m{i}"), "hello").await;
        assert_eq!(status, 200, "{body}");
    }
    let after = weft.scrape().await;
    let delta = |metric: &str, labels: &[(&str, &str)]| value(&after, metric, labels) - value(&before, metric, labels);

    // Requests per servlet: the route's template, never the room ID.
    let send_servlets: Vec<&str> = after
        .samples
        .iter()
        .filter(|s| s.metric == "synapse_http_server_requests_received_total" && s.labels.get("method") == Some("PUT"))
        .filter_map(|s| s.labels.get("servlet"))
        .filter(|s| s.contains("/send/"))
        .collect();
    assert_eq!(send_servlets.len(), 1, "one servlet for sends: {send_servlets:?}");
    let servlet = send_servlets[0];
    assert!(
        servlet.contains("(room_id)") && !servlet.contains(&room),
        "a template: {servlet}"
    );
    let by_servlet = [("method", "PUT"), ("servlet", servlet)];
    assert_eq!(delta("synapse_http_server_requests_received_total", &by_servlet), 3.0);
    assert_eq!(
        delta(
            "synapse_http_server_responses_total",
            &[("method", "PUT"), ("code", "200")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "synapse_http_server_response_time_seconds",
            &[("method", "PUT"), ("servlet", servlet), ("code", "200")]
        ),
        3.0,
        "the response time histogram counts each send"
    );

    // Events persisted: Synapse's total and per type and origin, and per room version.
    assert_eq!(delta("synapse_storage_events_persisted_events_total", &[]), 3.0);
    assert_eq!(
        delta(
            "synapse_storage_events_persisted_events_sep_total",
            &[("type", "m.room.message"), ("origin_type", "local")]
        ),
        3.0
    );
    assert_eq!(
        delta("weft_storage_events_persisted_total", &[("room_version", &version)]),
        3.0
    );

    // Database: waits for a connection and write transactions were timed.
    assert!(delta("synapse_storage_transaction_time", &[("outcome", "commit")]) >= 3.0);
    assert!(delta("synapse_storage_schedule_time", &[]) >= 3.0);
    assert!(value(&after, "weft_storage_pool_max_connections", &[]) >= 1.0);

    // Caches, the federation queue (nothing to send: no other server), the process.
    assert!(value(&after, "synapse_util_caches_cache", &[("name", "room_versions")]) >= 1.0);
    assert!(has(&after, "synapse_util_caches_cache_hits"));
    assert_eq!(
        value(&after, "synapse_federation_transaction_queue_pending_pdus", &[]),
        0.0
    );
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(has(&after, "process_cpu_seconds_total"));

    // A long-poll woken by a message counts as a waiter while it waits, and as woken.
    let (_, synced) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    let poller = alice.clone();
    let poll = tokio::spawn(async move {
        poller
            .get(&format!("/_matrix/client/v3/sync?timeout=20000&since={since}"))
            .await
    });
    let mut waiting = 0.0;
    for _ in 0..100 {
        waiting = value(&weft.scrape().await, "synapse_notifier_listeners", &[]);
        if waiting >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting >= 1.0, "the long-poll is counted as waiting");
    let woken_before = value(
        &weft.scrape().await,
        "synapse_notifier_users_woken_by_stream_total",
        &[],
    );
    send_text(&alice, &room, "wake", "wake up").await;
    let (status, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    let end = weft.scrape().await;
    assert!(value(&end, "synapse_notifier_users_woken_by_stream_total", &[]) > woken_before);
    assert_eq!(value(&end, "synapse_notifier_listeners", &[]), 0.0);

    weft.stop();
    db.drop_db().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_request_id() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let weft = Weft::start(&db, "info").await;
    let res = reqwest::get(format!("{}/_matrix/client/versions", weft.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res
        .headers()
        .get("x-request-id")
        .expect("a request ID header")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("GET-"), "{id}");
    // Every line is JSON (checked by `log_lines`), and the request's access line has its ID.
    let line = weft.access_line(&id).expect("the access line of the request");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["span"]["path"], "/_matrix/client/versions");
    // Another request, another ID.
    let res = reqwest::get(format!("{}/_matrix/client/versions", weft.base))
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"].to_str().unwrap(), id);
    weft.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_without_a_restart() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let weft = Weft::start(&db, "warn").await;
    // An admin, made with the command line on the same database.
    let status = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["user", "create", "root", "--admin", "--password", "pw", "--config"])
        .arg(&weft.config_path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let anon = weft.client();
    let (status, body) = anon
        .post(
            "/_matrix/client/v3/login",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"}, "password": "pw"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let admin = anon.with_token(body["access_token"].as_str().unwrap());
    let bob = anon.register("bob", "pw").await;

    let request_id = || async {
        let res = reqwest::get(format!("{}/_matrix/client/versions", weft.base))
            .await
            .unwrap();
        res.headers()["x-request-id"].to_str().unwrap().to_owned()
    };
    let quiet = request_id().await;
    assert!(weft.access_line(&quiet).is_none(), "at warn, requests are not logged");

    let (status, body) = admin.get("/_weft/admin/v1/log_level").await;
    assert_eq!((status, body["level"].as_str()), (200, Some("warn")));
    let (status, body) = bob.put("/_weft/admin/v1/log_level", json!({"level": "info"})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = admin
        .put("/_weft/admin/v1/log_level", json!({"level": "nonsense=["}))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = admin.put("/_weft/admin/v1/log_level", json!({"level": "info"})).await;
    assert_eq!(status, 200, "{body}");
    let loud = request_id().await;
    assert!(weft.access_line(&loud).is_some(), "at info, requests are logged");

    // SIGHUP applies the configuration file's level again: warn.
    weft.signal(libc::SIGHUP);
    let mut quiet_again = false;
    for _ in 0..100 {
        let (_, body) = admin.get("/_weft/admin/v1/log_level").await;
        if body["level"] == "warn" {
            quiet_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(quiet_again, "SIGHUP re-read log.level");
    let quiet = request_id().await;
    assert!(weft.access_line(&quiet).is_none(), "back at warn");
    weft.stop();
    db.drop_db().await;
}

both_backends!(sigterm_under_load_loses_nothing_acknowledged, |backend| async move {
    let Some(db) = TestDb::new(backend).await else { return };
    let mut weft = Weft::start(&db, "info").await;
    let anon = weft.client();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(anon.register(&format!("user{i}"), "pw").await);
    }
    let (status, body) = clients[0]
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    for c in &clients[1..] {
        let (status, body) = c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    // A long-poll in flight when the signal comes: it answers at once, not after its timeout.
    let (_, synced) = clients[1].get("/_matrix/client/v3/sync?timeout=0").await;
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    // Its filter leaves out the room's messages, so the load does not answer it.
    let filter = urlencode(&json!({"room": {"rooms": []}}).to_string());
    let poller = clients[1].clone();
    let poll = tokio::spawn(async move {
        poller
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=120000&since={since}&filter={filter}"
            ))
            .await
    });

    // Load: each client sends until the server stops answering; every 200 is recorded.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (room, acked) = (room.clone(), acked.clone());
        // A fresh connection pool per sender: requests in flight at the signal must finish.
        let c = Client {
            http: reqwest::Client::new(),
            ..c.clone()
        };
        tasks.push(tokio::spawn(async move {
            for j in 0..100_000 {
                let send = c
                    .http
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/load{i}-{j}",
                        c.base
                    ))
                    .bearer_auth(c.token.as_deref().unwrap())
                    .json(&json!({"msgtype": "m.text", "body": format!("{i}-{j}")}))
                    .send()
                    .await;
                let Ok(res) = send else { break };
                if res.status() != 200 {
                    break;
                }
                let Ok(body) = res.json::<Value>().await else { break };
                acked
                    .lock()
                    .unwrap()
                    .push(body["event_id"].as_str().unwrap().to_owned());
            }
        }));
    }
    for _ in 0..400 {
        if acked.lock().unwrap().len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let signalled = Instant::now();
    weft.signal(libc::SIGTERM);
    let exit = tokio::task::spawn_blocking(move || {
        let status = weft.child.wait().unwrap();
        (weft, status)
    });
    let (status, _) = poll.await.unwrap();
    assert_eq!(status, 200, "the long-poll is answered");
    let (mut weft, exit) = exit.await.unwrap();
    assert!(exit.success(), "weft exits 0 on SIGTERM: {exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "too few sends before the signal: {}", acked.len());
    let log = std::fs::read_to_string(&weft.log_path).unwrap();
    assert!(log.contains("shutting down") && log.contains("\"stopped\""), "{log}");

    weft.restart().await;
    let history = message_ids(&clients[2], &room).await;
    let unique: std::collections::HashSet<&String> = history.iter().collect();
    assert_eq!(unique.len(), history.len(), "an event appears twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged event {id} was lost");
    }
    weft.stop();
    db.drop_db().await;
});

both_backends!(
    metrics_count_federation_transactions_per_destination,
    |backend| async move {
        // In process: the exporter is the test binary's, so only what names this test's own
        // servers (the destination, unique per run) is asserted exactly.
        let ca = crate::harness_federation::TestCa::new();
        let with_metrics = |config: &mut weft::config::Config| {
            config.listeners.push(weft::config::ListenerConfig {
                address: [127, 0, 0, 1].into(),
                port: 0,
                apis: vec![weft::config::Api::Metrics],
                tls_cert: None,
                tls_key: None,
            });
        };
        let Some(a) = FederatedServer::start_with(backend, &ca, with_metrics).await else {
            return;
        };
        let Some(b) = FederatedServer::start(backend, &ca).await else {
            return;
        };
        let metrics_addr = a.server.running.as_ref().unwrap().addrs[2];
        let scrape = || async move {
            let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let lines = text.lines().map(|l| Ok(without_braces_in_values(l)));
            prometheus_parse::Scrape::parse(lines).unwrap()
        };
        let to_b = [("destination", b.server_name()), ("outcome", "sent")];
        assert_eq!(value(&scrape().await, "weft_federation_transactions_total", &to_b), 0.0);

        let alice = a.register("alice", "pw").await;
        let bob = b.register("bob", "pw").await;
        let room = crate::rooms::create_room(&alice, json!({"preset": "public_chat"})).await;
        let (status, body) = bob
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    urlencode(&room),
                    urlencode(a.server_name())
                ),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        crate::federation_rooms::send_text(&alice, &room, "over federation").await;
        crate::federation_rooms::eventually("A's message on B", || async {
            crate::federation_rooms::bodies(&bob, &room)
                .await
                .contains(&"over federation".to_owned())
                .then_some(())
        })
        .await;
        // The message reached B in a transaction A counts as sent to B; its queue drained.
        let sent = crate::federation_rooms::eventually("a transaction to B counted", || async {
            let scrape = scrape().await;
            let sent = value(&scrape, "weft_federation_transactions_total", &to_b);
            (sent >= 1.0).then_some(scrape)
        })
        .await;
        assert!(value(&sent, "synapse_federation_client_sent_transactions_total", &[]) >= 1.0);
        assert!(
            value(
                &sent,
                "synapse_storage_events_persisted_events_sep_total",
                &[("origin_type", "remote")]
            ) >= 1.0,
            "B's copy of A's events counts as remote"
        );
        a.stop().await;
        b.stop().await;
    }
);
