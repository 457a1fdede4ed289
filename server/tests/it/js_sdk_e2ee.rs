//! Real-client end-to-end encryption with matrix-js-sdk's Rust crypto (tests/js/e2ee.test.mjs):
//! encrypted messages between two users, cross-signing with UIA, key backup and restore on a
//! new device.

use crate::{
    both_backends,
    harness::TestServer,
    js_sdk::{prepare_js, run_node_test},
};

both_backends!(e2ee, |backend| async move {
    prepare_js().await;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let result = run_node_test(&server, "e2ee.test.mjs").await;
    server.stop().await;
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
