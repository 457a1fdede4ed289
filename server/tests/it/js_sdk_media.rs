//! Media with matrix-js-sdk (tests/js/media.test.mjs): uploadContent, then download and
//! thumbnails through the authenticated media URLs the SDK builds.

use crate::{
    both_backends,
    harness::TestServer,
    js_sdk::{prepare_js, run_node_test},
};

both_backends!(media, |backend| async move {
    prepare_js().await;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let result = run_node_test(&server, "media.test.mjs").await;
    server.stop().await;
    match result {
        Ok(report) => println!("{report}"),
        Err(report) => panic!("{report}"),
    }
});
