//! Two federated weft servers, a matrix-js-sdk client on each (tests/js/federation.test.mjs):
//! a room created on one with an alias, joined by the alias from the other, messages both
//! ways seen through each client's sync, both member lists, and a leave.

use crate::{
    both_backends,
    harness_federation::start_federation,
    js_sdk::{prepare_js, run_node_test_with},
};

both_backends!(two_servers, |backend| async move {
    prepare_js().await;
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let env = [
        ("WEFT_URL", servers[0].url()),
        ("WEFT_SERVER_NAME", servers[0].server_name().to_owned()),
        ("WEFT_URL_2", servers[1].url()),
        ("WEFT_SERVER_NAME_2", servers[1].server_name().to_owned()),
    ];
    let result = run_node_test_with("federation.test.mjs", &env).await;
    for server in servers {
        server.stop().await;
    }
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
