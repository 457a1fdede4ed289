//! Real-client room flows with matrix-js-sdk's own sync loop and room model (tests/js/rooms.test.mjs):
//! join by alias, messages, typing, receipts, back-pagination, edits and redactions.

use crate::{
    both_backends,
    harness::TestServer,
    js_sdk::{prepare_js, run_node_test},
};

both_backends!(rooms, |backend| async move {
    prepare_js().await;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let result = run_node_test(&server, "rooms.test.mjs").await;
    server.stop().await;
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
