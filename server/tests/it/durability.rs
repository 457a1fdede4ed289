//! Durability: SIGKILL the server in the middle of a send load, restart it, and check that
//! every acknowledged event is there once, in order, and that an incremental sync from before
//! the kill delivers exactly what was missed.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    both_backends,
    harness::*,
    rooms::{send_text, urlencode},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_weft(config_path: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--config"])
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weft")
}

async fn wait_ready(base: &str) {
    for _ in 0..200 {
        if let Ok(res) = reqwest::get(format!("{base}/_matrix/client/versions")).await {
            if res.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("weft did not start at {base}");
}

both_backends!(sigkill_mid_load_loses_nothing, |backend| async move {
    let Some(db) = TestDb::new(backend).await else { return };
    let port = free_port();
    let config = format!(
        "server_name = \"weft.test\"\npublic_baseurl = \"http://127.0.0.1:{port}/\"\nsigning_key_path = \"{dir}/signing.key\"\n\
         [database]\nurl = \"{url}\"\n[[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\n\
         [registration]\nenabled = true\n[rate_limits]\nenabled = false\n[media]\npath = \"{dir}/media\"\n[log]\nlevel = \"warn\"\n",
        dir = db.dir.display(),
        url = db.url,
    );
    let config_path = db.dir.join("weft.toml");
    std::fs::write(&config_path, config).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_weft(&config_path);
    wait_ready(&base).await;

    // Register through the real binary (the harness helper needs a TestServer, so do it here).
    let anon = Client {
        base: base.clone(),
        token: None,
        http: reqwest::Client::new(),
    };
    let mut clients = Vec::new();
    for i in 0..4 {
        let name = format!("user{i}");
        let (_, body) = anon
            .post(
                "/_matrix/client/v3/register",
                json!({"username": name, "password": "pw"}),
            )
            .await;
        let session = body["session"].as_str().unwrap().to_owned();
        let (status, body) = anon
            .post(
                "/_matrix/client/v3/register",
                json!({"username": name, "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        clients.push(anon.with_token(body["access_token"].as_str().unwrap()));
    }
    let (status, body) = clients[0]
        .post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    for c in &clients[1..] {
        assert_eq!(
            c.post(&format!("/_matrix/client/v3/join/{room}"), json!({})).await.0,
            200
        );
    }
    for i in 0..5 {
        send_text(&clients[0], &room, &format!("pre{i}"), "before").await;
    }
    let (_, synced) = clients[1].get("/_matrix/client/v3/sync?timeout=0").await;
    let token_before = synced["next_batch"].as_str().unwrap().to_owned();

    // Load: each client sends until the server dies; record every 200.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, room, acked) = (c.clone(), room.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..100_000 {
                let (status, body) = send_text(&c, &room, &format!("load{i}-{j}"), &format!("{i}-{j}")).await;
                if status != 200 {
                    break;
                }
                acked
                    .lock()
                    .unwrap()
                    .push(body["event_id"].as_str().unwrap().to_owned());
            }
        }));
    }
    // Kill once a fair number of sends has been acknowledged.
    for _ in 0..400 {
        if acked.lock().unwrap().len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "too few sends before the kill: {}", acked.len());

    let mut child = spawn_weft(&config_path);
    wait_ready(&base).await;
    let reader = &clients[2];
    let history = crate::rooms::message_ids(reader, &room).await;
    let unique: std::collections::HashSet<&String> = history.iter().collect();
    assert_eq!(unique.len(), history.len(), "an event appears twice");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged event {id} was lost");
    }

    // Incremental sync from before the kill: exactly the events after the token, no gap.
    let filter = urlencode(&json!({"room": {"timeline": {"limit": 1000}}}).to_string());
    let (status, inc) = clients[1]
        .get(&format!(
            "/_matrix/client/v3/sync?timeout=0&since={token_before}&filter={filter}"
        ))
        .await;
    assert_eq!(status, 200);
    let timeline = &inc["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], false);
    let synced: Vec<String> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let loaded: Vec<&String> = history.iter().skip(5).collect();
    assert_eq!(
        synced.iter().collect::<Vec<_>>(),
        loaded,
        "sync after restart must deliver exactly the events after the token"
    );
    for id in &acked {
        assert!(synced.contains(id), "sync missed acknowledged {id}");
    }
    let _: Value = inc;
    child.kill().unwrap();
    child.wait().unwrap();
    db.drop_db().await;
});
