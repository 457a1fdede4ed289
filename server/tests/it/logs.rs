//! The binary's log written to a file: plain text (no colour codes), with one access line per
//! request at the default level, as Synapse logs them.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_has_plain_access_lines() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The default level (no [log] section): info.
    let config = format!(
        "server_name = \"weft.test\"\npublic_baseurl = \"http://127.0.0.1:{port}/\"\nsigning_key_path = \"{dir}/signing.key\"\n\
         [database]\nurl = \"{url}\"\n[[listeners]]\naddress = \"127.0.0.1\"\nport = {port}\n\
         [registration]\nenabled = true\n[rate_limits]\nenabled = false\n[media]\npath = \"{dir}/media\"\n",
        dir = db.dir.display(),
        url = db.url,
    );
    let config_path = db.dir.join("weft.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = db.dir.join("weft.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weft");
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if reqwest::get(format!("{base}/_matrix/client/versions"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "weft did not start");

    let anon = Client {
        base: base.clone(),
        token: None,
        http: reqwest::Client::new(),
    };
    let (_, body) = anon
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "logger", "password": "pw"}),
        )
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = anon
        .post(
            "/_matrix/client/v3/register",
            json!({"username": "logger", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = anon
        .get(&format!("/_matrix/client/v3/account/whoami?access_token={token}&x=1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(anon.get("/_matrix/client/v3/no/such/thing").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains('\u{1b}'), "colour codes in a log file:\n{text}");
    assert!(!text.contains(&token), "the access token was logged:\n{text}");
    let line = |needles: &[&str]| text.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        line(&[
            " INFO ",
            "method=GET",
            "path=/_matrix/client/versions",
            "status=200",
            "duration_ms="
        ]),
        "no access line for /versions:\n{text}"
    );
    assert!(
        line(&[
            "path=/_matrix/client/v3/account/whoami?x=1",
            "user=@logger:weft.test",
            "status=200"
        ]),
        "no access line naming the user:\n{text}"
    );
    assert!(
        line(&["method=GET", "path=/_matrix/client/v3/no/such/thing", "status=404"]),
        "no access line for an unknown path:\n{text}"
    );
    db.drop_db().await;
}
