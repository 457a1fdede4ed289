//! End-to-end encryption between users of two federated weft servers, through matrix-js-sdk
//! and its Rust crypto (tests/js/federation_e2ee.test.mjs): cross-signing seen across,
//! encrypted messages decrypted both ways, and a second device added later that alice's
//! client learns of through device list updates and that reads new messages.

use crate::{
    both_backends,
    harness_federation::start_federation,
    js_sdk::{prepare_js, run_node_test_with},
};

both_backends!(encrypted_across_servers, |backend| async move {
    prepare_js().await;
    let Some((_ca, servers)) = start_federation(backend, 2).await else {
        return;
    };
    let env = [("WEFT_URL", servers[0].url()), ("WEFT_URL_2", servers[1].url())];
    let result = run_node_test_with("federation_e2ee.test.mjs", &env).await;
    for server in servers {
        server.stop().await;
    }
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
