//! End-to-end encryption between users of two federated weft servers, through matrix-js-sdk
//! and its Rust crypto (tests/js/federation_e2ee.test.mjs): cross-signing seen across,
//! encrypted messages decrypted both ways, and a second device added later that alice's
//! client learns of through device list updates and that reads new messages; then the same
//! with bob on a Synapse.

use crate::{
    both_backends,
    harness_federation::{start_federation, FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
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

// The same conversation with bob on a Synapse (`harness_synapse`): keys, claims, device list
// updates and to-device messages between the two implementations. Without
// `WEFT_TEST_SYNAPSE` (set by .ci/run) it prints a SKIPPED line and passes.
both_backends!(encrypted_with_synapse, |backend| async move {
    prepare_js().await;
    let Some(python) = synapse_python() else {
        return;
    };
    let ca = TestCa::new();
    let Some(weft) = FederatedServer::start(backend, &ca).await else {
        return;
    };
    let synapse = Synapse::start(&python, &ca).await;
    synapse.register("bob").await;
    let env = [
        ("WEFT_URL", weft.url()),
        ("WEFT_URL_2", synapse.client().base),
        ("BOB_USERNAME", "bob".to_owned()),
        ("BOB_PASSWORD", "password-bob".to_owned()),
    ];
    let result = run_node_test_with("federation_e2ee.test.mjs", &env).await;
    weft.stop().await;
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}\n{}", synapse.log_tail(60)),
    }
});
