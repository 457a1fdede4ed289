//! Real-client tests with matrix-js-sdk (see tests/js): a real weft server, driven by the
//! SDK under Node's built-in test runner. Node and npm are required: without them these
//! tests fail rather than skip.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use crate::{both_backends, harness::TestServer};

/// How long one `node --test` run may take before it counts as hung.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js")
}

/// Runs `program` once to check that it exists, with a clear message when it doesn't.
fn require_tool(program: &str) {
    const NEED: &str = "the matrix-js-sdk tests need Node.js 20+ and npm on PATH";
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`{program} --version` failed ({status}): {NEED}"),
        Err(e) => panic!("`{program}` could not be run ({e}): {NEED}"),
    }
}

fn describe(what: &str, output: &Output) -> String {
    format!(
        "{what} exited with {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

/// Makes sure tests/js/node_modules holds the locked dependencies, running `npm ci` at most
/// once per process and never in two tests at once.
fn ensure_node_modules() {
    static INSTALL: Mutex<bool> = Mutex::new(false);
    // A panic while installing poisons the lock; the next test then tries again.
    let mut installed = INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *installed {
        return;
    }
    require_tool("node");
    let dir = js_dir();
    // Re-install when a dependency added to package.json later is missing.
    if ["matrix-js-sdk", "fake-indexeddb"]
        .iter()
        .any(|p| !dir.join(format!("node_modules/{p}/package.json")).exists())
    {
        require_tool("npm");
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running `npm ci` in {}: {e}", dir.display()));
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("`npm ci` in {}", dir.display()), &output)
        );
    }
    *installed = true;
}

/// Runs one node:test file in tests/js against `server`: `Err` (with node's output) unless
/// every test in it passed.
pub(crate) async fn run_node_test(server: &TestServer, file: &str) -> Result<String, String> {
    let env = [
        ("WEFT_URL", server.url()),
        ("WEFT_SERVER_NAME", server.config.server_name.clone()),
    ];
    run_node_test_with(file, &env).await
}

/// Runs one node:test file in tests/js with `env` (the servers' URLs and names): `Err` (with
/// node's output) unless every test in it passed.
pub(crate) async fn run_node_test_with(file: &str, env: &[(&str, String)]) -> Result<String, String> {
    let dir = js_dir();
    let child = tokio::process::Command::new("node")
        // matrix-js-sdk arms a timer for every request's local timeout (80 s past a /sync
        // long-poll) and never clears it: without --test-force-exit a file that started a
        // client idles that long after its last test.
        .args(["--test", "--test-force-exit", file])
        .current_dir(&dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running `node --test {file}` in {}: {e}", dir.display()))?;
    // On a timeout the child is dropped, and so killed.
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("`node --test {file}` did not finish within {NODE_TIMEOUT:?}"))?
        .map_err(|e| format!("waiting for `node --test {file}`: {e}"))?;
    let report = describe(&format!("`node --test {file}`"), &output);
    if output.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Checks for node and npm and installs tests/js's dependencies; call it before starting a
/// server, so that a failure here leaves no test database behind.
pub(crate) async fn prepare_js() {
    if let Err(panic) = tokio::task::spawn_blocking(ensure_node_modules).await {
        std::panic::resume_unwind(panic.into_panic());
    }
}

both_backends!(foundation, |backend| async move {
    prepare_js().await;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let result = run_node_test(&server, "foundation.test.mjs").await;
    server.stop().await;
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
