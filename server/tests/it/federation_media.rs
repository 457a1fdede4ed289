//! Media across servers: a client on one server downloads and thumbnails media uploaded on
//! another (fetched over `/_matrix/federation/v1/media/download`, kept, and served from the
//! copy once the origin is gone), media over the configured size is refused, the
//! federation endpoints answer only signed requests, as multipart/mixed, and a server
//! without them is asked on the legacy download, once however many ask at the same time.
//! A thumbnail of media never downloaded is asked of its server and kept alone.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use reqwest::{header::HeaderMap, Method};
use ruma::http_headers::ContentDisposition;
use serde_json::Value;

use crate::{
    both_backends,
    harness::Client,
    harness_federation::{FederatedServer, TestCa},
    harness_forge::Forger,
    media::count_rows,
};

async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str, filename: &str) -> String {
    let url = format!("{}/_matrix/media/v3/upload?filename={filename}", client.base);
    let res = client
        .http
        .post(url)
        .bearer_auth(client.token.as_deref().expect("a logged-in client"))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.expect("JSON");
    body["content_uri"].as_str().expect("content_uri").to_owned()
}

struct Fetched {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// `GET` on the client API, with the client's token when it has one.
async fn get(client: &Client, path: &str) -> Fetched {
    let mut req = client.http.get(format!("{}{path}", client.base));
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request sent");
    Fetched {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.bytes().await.expect("body").to_vec(),
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 3 % 256) as u8, (y * 5 % 256) as u8, 90])
    }));
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
    out
}

/// Bytes that do not compress, so that a size limit sees them whole.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const B_LIMIT: usize = 256 * 1024;

both_backends!(remote_media_is_fetched_kept_and_thumbnailed, |backend| async move {
    let ca = TestCa::new();
    let Some(a) = FederatedServer::start(backend, &ca).await else {
        return;
    };
    // B fetches at most B_LIMIT bytes of anyone's media.
    let Some(b) = FederatedServer::start_with(backend, &ca, |c| c.media.max_upload_size = B_LIMIT).await else {
        return;
    };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;

    let picture = png(120, 80);
    let mxc = upload(&alice, picture.clone(), "image/png", "holiday.png").await;
    let server_and_id = mxc.strip_prefix("mxc://").unwrap().to_owned();
    let (origin, media_id) = server_and_id.split_once('/').unwrap();
    assert_eq!(origin, a.server_name());

    // Bob on B downloads A's media: the same bytes, type and name.
    let got = get(&bob, &format!("/_matrix/client/v1/media/download/{server_and_id}")).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body, picture);
    assert_eq!(got.header("content-type"), "image/png");
    let disposition = ContentDisposition::try_from(got.header("content-disposition").as_bytes()).unwrap();
    assert_eq!(disposition.filename.as_deref(), Some("holiday.png"));

    // A thumbnail of it, made on B: scaled into 60x60 keeping the aspect ratio.
    let thumb = get(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{server_and_id}?width=60&height=60&method=scale"),
    )
    .await;
    assert_eq!(thumb.status, 200, "{}", String::from_utf8_lossy(&thumb.body));
    let image = image::load_from_memory(&thumb.body).expect("a thumbnail image");
    assert_eq!((image.width(), image.height()), (60, 40));

    // Unknown media on A is not found through B.
    let missing = get(
        &bob,
        &format!("/_matrix/client/v1/media/download/{origin}/NoSuchMediaHere"),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", String::from_utf8_lossy(&missing.body));
    assert_eq!(missing.json()["errcode"], "M_NOT_FOUND");

    // Media larger than B fetches is refused, and not kept: asking again refuses again.
    let big = upload(&alice, noise(B_LIMIT + 50_000), "application/octet-stream", "big.bin").await;
    let big_path = format!(
        "/_matrix/client/v1/media/download/{}",
        big.strip_prefix("mxc://").unwrap()
    );
    for _ in 0..2 {
        let refused = get(&bob, &big_path).await;
        assert_eq!(refused.status, 502, "{}", String::from_utf8_lossy(&refused.body));
        assert_eq!(refused.json()["errcode"], "M_TOO_LARGE");
    }
    // Media just under the limit passes.
    let fits = noise(B_LIMIT - 1000);
    let fits_mxc = upload(&alice, fits.clone(), "application/octet-stream", "fits.bin").await;
    let got = get(
        &bob,
        &format!(
            "/_matrix/client/v1/media/download/{}",
            fits_mxc.strip_prefix("mxc://").unwrap()
        ),
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body, fits);

    // The federation endpoint answers only signed requests, with a JSON part then the file.
    let forger = Forger::as_server(&ca, &b);
    let path = format!("/_matrix/federation/v1/media/download/{media_id}");
    let (status, _) = forger.send_raw(&a, Method::GET, &path, None, Vec::new()).await;
    assert_eq!(status, 401, "an unsigned media request is refused");
    let note = upload(&alice, b"a note for other servers".to_vec(), "text/plain", "note.txt").await;
    let note_id = note.rsplit('/').next().unwrap();
    let (status, body) = forger
        .request(
            &a,
            Method::GET,
            &format!("/_matrix/federation/v1/media/download/{note_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body.as_str().expect("a multipart body");
    let json_at = text.find("Content-Type: application/json").expect("a JSON part");
    let file_at = text.find("Content-Type: text/plain").expect("the file's part");
    assert!(json_at < file_at, "{text}");
    assert!(text.contains("a note for other servers"), "{text}");
    assert!(text.contains("note.txt"), "{text}");

    // With A gone, B still serves what it kept, and makes new thumbnails from it.
    a.stop().await;
    let again = get(&bob, &format!("/_matrix/client/v1/media/download/{server_and_id}")).await;
    assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(again.body, picture);
    let crop = get(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{server_and_id}?width=32&height=32&method=crop"),
    )
    .await;
    assert_eq!(crop.status, 200, "{}", String::from_utf8_lossy(&crop.body));
    let image = image::load_from_memory(&crop.body).expect("a thumbnail image");
    assert_eq!((image.width(), image.height()), (32, 32));
    // Media B never fetched cannot be had while A is down.
    let unreachable = get(
        &bob,
        &format!("/_matrix/client/v1/media/download/{origin}/NeverFetched"),
    )
    .await;
    assert_eq!(
        unreachable.status,
        502,
        "{}",
        String::from_utf8_lossy(&unreachable.body)
    );
    // The legacy endpoint's allow_remote=false answers only what is kept, and with
    // authenticated media on (the default) not even that.
    let legacy = get(
        &b.client(),
        &format!("/_matrix/media/v3/download/{origin}/NeverFetched?allow_remote=false"),
    )
    .await;
    assert_eq!(legacy.status, 404);
    b.stop().await;
});

both_backends!(
    remote_thumbnails_are_asked_of_the_media_server_and_kept,
    |backend| async move {
        let ca = TestCa::new();
        let Some(a) = FederatedServer::start(backend, &ca).await else {
            return;
        };
        let Some(b) = FederatedServer::start(backend, &ca).await else {
            return;
        };
        let alice = a.register("alice", "password-alice").await;
        let bob = b.register("bob", "password-bob").await;
        let mxc = upload(&alice, png(120, 80), "image/png", "holiday.png").await;
        let server_and_id = mxc.strip_prefix("mxc://").unwrap().to_owned();
        let thumbnail_path =
            format!("/_matrix/client/v1/media/thumbnail/{server_and_id}?width=60&height=60&method=scale");

        // Bob on B asks for a thumbnail of A's picture: A makes it, B keeps it, and the picture
        // itself never travels.
        let thumb = get(&bob, &thumbnail_path).await;
        assert_eq!(thumb.status, 200, "{}", String::from_utf8_lossy(&thumb.body));
        assert_eq!(thumb.header("content-type"), "image/png");
        let image = image::load_from_memory(&thumb.body).expect("a thumbnail image");
        assert_eq!((image.width(), image.height()), (60, 40));
        assert_eq!(count_rows(&b, "SELECT COUNT(*) FROM remote_media").await, 0);
        assert_eq!(
            count_rows(&b, "SELECT COUNT(*) FROM remote_media_fetched_thumbnails").await,
            1
        );

        // With A gone, B still has that thumbnail, and no other: it never had the picture.
        a.stop().await;
        let again = get(&bob, &thumbnail_path).await;
        assert_eq!(again.status, 200, "{}", String::from_utf8_lossy(&again.body));
        assert_eq!(again.body, thumb.body);
        let other = get(
            &bob,
            &format!("/_matrix/client/v1/media/thumbnail/{server_and_id}?width=32&height=32&method=crop"),
        )
        .await;
        assert_eq!(other.status, 502, "{}", String::from_utf8_lossy(&other.body));
        b.stop().await;
    }
);

both_backends!(concurrent_requests_for_remote_media_all_get_it, |backend| async move {
    let ca = TestCa::new();
    let (Some(a), Some(b)) = (
        FederatedServer::start(backend, &ca).await,
        FederatedServer::start(backend, &ca).await,
    ) else {
        return;
    };
    let alice = a.register("alice", "password-alice").await;
    let bob = b.register("bob", "password-bob").await;
    let bytes = noise(200_000);
    let mxc = upload(&alice, bytes.clone(), "application/octet-stream", "shared.bin").await;
    let path = format!(
        "/_matrix/client/v1/media/download/{}",
        mxc.strip_prefix("mxc://").unwrap()
    );
    // Those that wait for the one fetch under way get what it kept.
    let fetches = (0..6).map(|_| get(&bob, &path));
    for got in futures::future::join_all(fetches).await {
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.body, bytes);
    }
    a.stop().await;
    b.stop().await;
});

/// A stand-in for a server from before authenticated media, on loopback TLS from the test CA:
/// it answers the federation media download as an unknown endpoint (404 `M_UNRECOGNIZED`, as
/// Synapse did), knows no federation thumbnails, and serves the legacy
/// `/_matrix/media/v3/download` (`file` as `old-media`, a 120x80 PNG as `old-picture`),
/// counting what it is asked.
struct OldServer {
    name: String,
    legacy_asks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: axum_server::Handle,
}

impl OldServer {
    async fn start(ca: &TestCa, file: &'static [u8]) -> OldServer {
        use std::sync::{atomic::AtomicUsize, Arc};

        use axum::{
            extract::{Path, RawQuery},
            http::StatusCode,
            response::IntoResponse,
            routing::get,
            Router,
        };
        let dir = std::env::temp_dir().join(format!("weft-old-server-{}", weft_core::util::random_string(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = ca.issue(&["127.0.0.1"], &dir);
        let legacy_asks = Arc::new(AtomicUsize::new(0));
        let counter = legacy_asks.clone();
        let picture: &'static [u8] = Box::leak(png(120, 80).into_boxed_slice());
        let app = Router::new()
            .route(
                "/_matrix/federation/v1/media/download/{id}",
                get(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({ "errcode": "M_UNRECOGNIZED", "error": "Unrecognized request" })),
                    )
                }),
            )
            .route(
                "/_matrix/media/v3/download/{server}/{id}",
                get(
                    move |Path((_, id)): Path<(String, String)>, RawQuery(query): RawQuery| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            // Another server asks only for this server's own media.
                            if id == "old-picture" && query.as_deref() == Some("allow_remote=false") {
                                return ([("content-type", "image/png")], picture).into_response();
                            }
                            if id != "old-media" || query.as_deref() != Some("allow_remote=false") {
                                return StatusCode::NOT_FOUND.into_response();
                            }
                            (
                                [
                                    ("content-type", "text/plain"),
                                    ("content-disposition", "attachment; filename=\"old.txt\""),
                                ],
                                file,
                            )
                                .into_response()
                        }
                    },
                ),
            );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let name = listener.local_addr().unwrap().to_string();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(weft::tls::server_config(&cert, &key).unwrap());
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        OldServer {
            name,
            legacy_asks,
            handle,
        }
    }
}

both_backends!(
    media_of_a_server_without_authenticated_media_comes_from_the_legacy_endpoint,
    |backend| async move {
        let ca = TestCa::new();
        let Some(b) = FederatedServer::start(backend, &ca).await else {
            return;
        };
        let old = OldServer::start(&ca, b"kept from the old days").await;
        let bob = b.register("bob", "password-bob").await;

        // Asked for by several requests at once, it is fetched once.
        let path = format!("/_matrix/client/v1/media/download/{}/old-media", old.name);
        let all = futures::future::join_all((0..5).map(|_| get(&bob, &path))).await;
        for got in &all {
            assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
            assert_eq!(got.body, b"kept from the old days");
            assert_eq!(got.header("content-type"), "text/plain");
            let disposition = ContentDisposition::try_from(got.header("content-disposition").as_bytes()).unwrap();
            assert_eq!(disposition.filename.as_deref(), Some("old.txt"));
        }
        assert_eq!(old.legacy_asks.load(std::sync::atomic::Ordering::SeqCst), 1);
        // And served from B's copy afterwards.
        let again = get(&bob, &path).await;
        assert_eq!(again.body, b"kept from the old days");
        assert_eq!(old.legacy_asks.load(std::sync::atomic::Ordering::SeqCst), 1);
        // What the old server does not have is not found.
        let missing = get(&bob, &format!("/_matrix/client/v1/media/download/{}/gone", old.name)).await;
        assert_eq!(missing.status, 404, "{}", String::from_utf8_lossy(&missing.body));

        // It makes no thumbnails for other servers: B fetches the picture and makes one.
        let thumb = get(
            &bob,
            &format!(
                "/_matrix/client/v1/media/thumbnail/{}/old-picture?width=60&height=60&method=scale",
                old.name
            ),
        )
        .await;
        assert_eq!(thumb.status, 200, "{}", String::from_utf8_lossy(&thumb.body));
        let image = image::load_from_memory(&thumb.body).expect("a thumbnail image");
        assert_eq!((image.width(), image.height()), (60, 40));
        assert_eq!(old.legacy_asks.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(
            count_rows(&b, "SELECT COUNT(*) FROM remote_media_fetched_thumbnails").await,
            0
        );

        old.handle.shutdown();
        b.stop().await;
    }
);
