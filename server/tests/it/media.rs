//! The media repository: uploads (plain and create+PUT), downloads on the authenticated and
//! legacy endpoints, safe serving headers, limits and quotas, thumbnails, URL previews.

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use image::{codecs::gif::GifEncoder, DynamicImage, Frame, ImageFormat, RgbImage, RgbaImage};
use reqwest::header::HeaderMap;
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    both_backends,
    harness::{Client, TestServer},
    rooms::urlencode,
};

// ----- helpers -----

/// Uploads `bytes` with `POST /_matrix/media/v3/upload`.
async fn upload(client: &Client, bytes: Vec<u8>, content_type: Option<&str>, filename: Option<&str>) -> (u16, Value) {
    let mut url = format!("{}/_matrix/media/v3/upload", client.base);
    if let Some(name) = filename {
        url = format!("{url}?filename={}", urlencode(name));
    }
    let mut req = client.http.post(url).body(bytes);
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.expect("upload sent");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Uploads and returns the MXC URI.
async fn upload_ok(client: &Client, bytes: Vec<u8>, content_type: &str, filename: Option<&str>) -> String {
    let (status, body) = upload(client, bytes, Some(content_type), filename).await;
    assert_eq!(status, 200, "{body}");
    body["content_uri"].as_str().expect("content_uri").to_owned()
}

async fn put_upload(client: &Client, mxc: &str, bytes: Vec<u8>, content_type: &str) -> (u16, Value) {
    let url = format!(
        "{}/_matrix/media/v3/upload/{}?filename=put.bin",
        client.base,
        server_and_id(mxc)
    );
    let mut req = client.http.put(url).body(bytes).header("content-type", content_type);
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("put sent");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `mxc://server/id` -> `server/id`.
fn server_and_id(mxc: &str) -> &str {
    mxc.strip_prefix("mxc://").expect("an mxc URI")
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
    fn disposition(&self) -> ContentDisposition {
        ContentDisposition::try_from(self.header("content-disposition").as_bytes())
            .expect("a valid Content-Disposition")
    }
    fn image(&self) -> DynamicImage {
        image::load_from_memory(&self.body).unwrap_or_else(|e| panic!("not an image ({e}): status {}", self.status))
    }
}

async fn fetch(client: &Client, path: &str) -> Fetched {
    let mut req = client.http.get(format!("{}{}", client.base, path));
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("body").to_vec();
    Fetched { status, headers, body }
}

async fn download(client: &Client, mxc: &str) -> Fetched {
    fetch(
        client,
        &format!("/_matrix/client/v1/media/download/{}", server_and_id(mxc)),
    )
    .await
}

async fn thumbnail(client: &Client, mxc: &str, query: &str) -> Fetched {
    fetch(
        client,
        &format!("/_matrix/client/v1/media/thumbnail/{}?{query}", server_and_id(mxc)),
    )
    .await
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode test image");
    out
}

fn gradient(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    }))
}

/// A two-frame animated GIF.
fn animated_gif(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        let frames = [[255u8, 0, 0, 255], [0, 0, 255, 255]]
            .into_iter()
            .map(|px| Frame::new(RgbaImage::from_pixel(w, h, image::Rgba(px))));
        encoder.encode_frames(frames).expect("encode gif");
    }
    out
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn content_files(server: &TestServer) -> usize {
    files_under(&server.config.media.path.join("content")).len()
}

fn temp_files(server: &TestServer) -> usize {
    files_under(&server.config.media.path.join("tmp")).len()
}

pub(crate) async fn count_rows(server: &TestServer, sql: &str) -> i64 {
    let db = weft_core::Db::connect(&server.db.url, 1)
        .await
        .expect("connect to the test database");
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.pool()).await.expect("count query");
    db.close().await;
    n
}

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

// ----- uploads and downloads -----

both_backends!(upload_download_round_trip, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;

    let (status, body) = alice.get("/_matrix/client/v1/media/config").await;
    assert_eq!(
        (status, body["m.upload.size"].as_u64()),
        (200, Some(50 * 1024 * 1024)),
        "{body}"
    );
    let (status, body) = alice.get("/_matrix/media/v3/config").await;
    assert_eq!(
        (status, body["m.upload.size"].as_u64()),
        (200, Some(50 * 1024 * 1024)),
        "{body}"
    );

    // Bytes, content type and a non-ASCII filename come back as uploaded.
    let name = "Grüße aus Köln 🌍 \"quoted\".txt";
    let text = "hello, media\n".repeat(1000).into_bytes();
    let mxc = upload_ok(&alice, text.clone(), "text/plain; charset=utf-8", Some(name)).await;
    assert!(mxc.starts_with("mxc://weft.test/"), "{mxc}");
    let got = download(&alice, &mxc).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, text);
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(got.header("content-length"), text.len().to_string());
    let disposition = got.disposition();
    assert_eq!(disposition.disposition_type, ContentDispositionType::Inline);
    assert_eq!(disposition.filename.as_deref(), Some(name));
    assert!(
        got.header("content-disposition").contains("filename*=utf-8''"),
        "{}",
        got.header("content-disposition")
    );
    assert_eq!(got.header("content-security-policy"), CSP);
    assert_eq!(got.header("cross-origin-resource-policy"), "cross-origin");
    assert_eq!(got.header("x-content-type-options"), "nosniff");

    // The filename in the path overrides the stored one.
    let got = fetch(
        &alice,
        &format!(
            "/_matrix/client/v1/media/download/{}/other%20name.txt",
            server_and_id(&mxc)
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, text);
    assert_eq!(got.disposition().filename.as_deref(), Some("other name.txt"));

    // Active content is never inline; images (not SVG) are.
    for (content_type, inline) in [
        ("text/html", false),
        ("image/svg+xml", false),
        ("application/javascript", false),
        ("image/png", true),
        ("video/mp4", true),
        ("audio/ogg", true),
    ] {
        let mxc = upload_ok(
            &alice,
            b"<html><script>alert(1)</script></html>".to_vec(),
            content_type,
            Some("f"),
        )
        .await;
        let got = download(&alice, &mxc).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), content_type);
        let expected = if inline {
            ContentDispositionType::Inline
        } else {
            ContentDispositionType::Attachment
        };
        assert_eq!(got.disposition().disposition_type, expected, "{content_type}");
        assert_eq!(got.header("content-security-policy"), CSP);
    }

    // No Content-Type: served as an opaque attachment; no filename: none in the header.
    let (status, body) = upload(&alice, vec![1, 2, 3], None, None).await;
    assert_eq!(status, 200, "{body}");
    let got = download(&alice, body["content_uri"].as_str().unwrap()).await;
    assert_eq!((got.status, got.body.as_slice()), (200, &[1u8, 2, 3][..]));
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert_eq!(got.disposition().disposition_type, ContentDispositionType::Attachment);
    assert_eq!(got.disposition().filename, None);

    // An empty file is fine too.
    let mxc = upload_ok(&alice, Vec::new(), "text/plain", Some("empty.txt")).await;
    let got = download(&alice, &mxc).await;
    assert_eq!((got.status, got.body.len()), (200, 0));
    server.stop().await;
});

both_backends!(identical_content_is_stored_once, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let bytes = b"the same bytes, twice".to_vec();
    let first = upload_ok(&alice, bytes.clone(), "text/plain", Some("a.txt")).await;
    let second = upload_ok(&bob, bytes.clone(), "application/octet-stream", Some("b.bin")).await;
    assert_ne!(first, second, "each upload gets its own media ID");
    assert_eq!(content_files(&server), 1, "identical content is stored once");
    assert_eq!(temp_files(&server), 0);
    // Each ID keeps its own metadata.
    let a = download(&alice, &first).await;
    let b = download(&alice, &second).await;
    assert_eq!(
        (a.body.as_slice(), b.body.as_slice()),
        (bytes.as_slice(), bytes.as_slice())
    );
    assert_eq!(a.header("content-type"), "text/plain");
    assert_eq!(b.header("content-type"), "application/octet-stream");
    assert_eq!(b.disposition().filename.as_deref(), Some("b.bin"));
    upload_ok(&alice, b"different bytes".to_vec(), "text/plain", None).await;
    assert_eq!(content_files(&server), 2);
    server.stop().await;
});

both_backends!(create_then_put, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    let (status, body) = alice.post("/_matrix/media/v1/create", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    let expires = body["unused_expires_at"].as_i64().expect("unused_expires_at");
    assert!(
        expires > weft_core::util::now_ms() + 60 * 60 * 1000,
        "expires in about a day: {expires}"
    );

    // Not uploaded yet: a download waits at most timeout_ms, then 504 M_NOT_YET_UPLOADED.
    let got = fetch(
        &alice,
        &format!(
            "/_matrix/client/v1/media/download/{}?timeout_ms=100",
            server_and_id(&mxc)
        ),
    )
    .await;
    assert_eq!(
        (got.status, got.json()["errcode"].as_str()),
        (504, Some("M_NOT_YET_UPLOADED"))
    );

    // Only the creator may upload.
    let (status, body) = put_upload(&bob, &mxc, b"bob's".to_vec(), "text/plain").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = put_upload(&alice, &mxc, b"alice's".to_vec(), "text/plain").await;
    assert_eq!(status, 200, "{body}");
    let got = download(&bob, &mxc).await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"alice's"[..]));
    assert_eq!(got.disposition().filename.as_deref(), Some("put.bin"));

    // A second upload is refused and changes nothing.
    let (status, body) = put_upload(&alice, &mxc, b"again".to_vec(), "text/plain").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (409, Some("M_CANNOT_OVERWRITE_MEDIA")),
        "{body}"
    );
    assert_eq!(download(&alice, &mxc).await.body, b"alice's");

    // Unknown IDs and other servers' IDs.
    let (status, body) = put_upload(&alice, "mxc://weft.test/doesnotexist", b"x".to_vec(), "text/plain").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = put_upload(&alice, "mxc://elsewhere.test/abc", b"x".to_vec(), "text/plain").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    // Plain uploads cannot be overwritten through PUT either.
    let plain = upload_ok(&alice, b"plain".to_vec(), "text/plain", None).await;
    let (status, body) = put_upload(&alice, &plain, b"x".to_vec(), "text/plain").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (409, Some("M_CANNOT_OVERWRITE_MEDIA")),
        "{body}"
    );

    // At most five IDs may wait for their upload at once.
    for _ in 0..5 {
        let (status, body) = bob.post("/_matrix/media/v1/create", serde_json::json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = bob.post("/_matrix/media/v1/create", serde_json::json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED")),
        "{body}"
    );
    server.stop().await;
});

both_backends!(unused_media_ids_expire, |backend| async move {
    let Some(server) =
        TestServer::start_with(backend, |c| c.media.unused_expiration_time = Duration::from_millis(300)).await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let (status, body) = alice.post("/_matrix/media/v1/create", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body) = put_upload(&alice, &mxc, b"late".to_vec(), "text/plain").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let got = download(&alice, &mxc).await;
    assert_eq!((got.status, got.json()["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    server.stop().await;
});

both_backends!(size_limit_and_quota, |backend| async move {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.media.max_upload_size = 1000;
        c.media.max_user_storage = 2500;
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    let (status, body) = alice.get("/_matrix/client/v1/media/config").await;
    assert_eq!(body["m.upload.size"], 1000, "{status} {body}");
    let (status, body) = upload(&alice, vec![7; 1001], Some("application/octet-stream"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{body}");
    // Without a Content-Length (chunked), the limit holds while streaming.
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr,
        alice.token.as_ref().unwrap()
    )
    .into_bytes();
    for _ in 0..2 {
        request.extend_from_slice(format!("{:x}\r\n", 600).as_bytes());
        request.extend_from_slice(&[1u8; 600]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    conn.write_all(&request).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("M_TOO_LARGE"), "{response}");
    assert_eq!(content_files(&server), 0, "refused uploads store nothing");
    assert_eq!(temp_files(&server), 0);

    // 2500 bytes of quota: two uploads of 1000 fit, a third does not.
    upload_ok(&alice, vec![1; 1000], "application/octet-stream", None).await;
    upload_ok(&alice, vec![2; 1000], "application/octet-stream", None).await;
    let (status, body) = upload(&alice, vec![3; 1000], Some("application/octet-stream"), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_RESOURCE_LIMIT_EXCEEDED")),
        "{body}"
    );
    // Identical content still counts against the quota (it is another upload).
    let (status, body) = upload(&alice, vec![1; 1000], Some("application/octet-stream"), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_RESOURCE_LIMIT_EXCEEDED")),
        "{body}"
    );
    upload_ok(&alice, vec![4; 500], "application/octet-stream", None).await;
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media").await, 3);
    // The quota is per user.
    upload_ok(&bob, vec![3; 1000], "application/octet-stream", None).await;
    // create+PUT counts too.
    let (_, body) = alice.post("/_matrix/media/v1/create", serde_json::json!({})).await;
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    let (status, body) = put_upload(&alice, &mxc, vec![5; 10], "text/plain").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_RESOURCE_LIMIT_EXCEEDED")),
        "{body}"
    );
    server.stop().await;
});

both_backends!(truncated_upload_leaves_nothing, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let token = alice.token.clone().unwrap();

    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload?filename=cut.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n",
        server.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[9u8; 5000]).await.unwrap();
    conn.flush().await.unwrap();
    // The upload has started: its temporary file exists.
    wait_for(|| temp_files(&server) == 1, "the upload's temporary file").await;
    drop(conn);
    wait_for(|| temp_files(&server) == 0, "the temporary file to be removed").await;
    assert_eq!(content_files(&server), 0);
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media").await, 0);
    // The server is fine afterwards.
    let mxc = upload_ok(&alice, vec![9; 5000], "application/octet-stream", None).await;
    assert_eq!(download(&alice, &mxc).await.body, vec![9; 5000]);
    server.stop().await;
});

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

both_backends!(unknown_media_and_authentication, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let mxc = upload_ok(
        &alice,
        encode(gradient(64, 64), ImageFormat::Png),
        "image/png",
        Some("a.png"),
    )
    .await;
    let anonymous = server.client();

    // The authenticated endpoints need a token.
    for path in [
        format!("/_matrix/client/v1/media/download/{}", server_and_id(&mxc)),
        format!("/_matrix/client/v1/media/download/{}/a.png", server_and_id(&mxc)),
        format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32",
            server_and_id(&mxc)
        ),
        "/_matrix/client/v1/media/config".to_owned(),
        "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org".to_owned(),
        "/_matrix/media/v3/config".to_owned(),
    ] {
        let got = fetch(&anonymous, &path).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (401, Some("M_MISSING_TOKEN")),
            "{path}"
        );
        assert_eq!(fetch(&alice.with_token("bogus"), &path).await.status, 401, "{path}");
    }
    let (status, _) = upload(&anonymous, vec![1], Some("text/plain"), None).await;
    assert_eq!(status, 401);

    // Unknown media is 404 M_NOT_FOUND (other servers' media is fetched over federation:
    // federation_media.rs).
    for path in [
        "/_matrix/client/v1/media/download/weft.test/doesnotexist",
        "/_matrix/client/v1/media/thumbnail/weft.test/doesnotexist?width=32&height=32",
    ] {
        let got = fetch(&alice, path).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{path}"
        );
    }

    // With authenticated media on (the default), the legacy endpoints do not serve new media.
    for path in [
        format!("/_matrix/media/v3/download/{}", server_and_id(&mxc)),
        format!("/_matrix/media/v3/download/{}/a.png", server_and_id(&mxc)),
        format!("/_matrix/media/v3/thumbnail/{}?width=32&height=32", server_and_id(&mxc)),
        format!("/_matrix/media/r0/download/{}", server_and_id(&mxc)),
    ] {
        let got = fetch(&anonymous, &path).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (404, Some("M_NOT_FOUND")),
            "{path}"
        );
    }
    assert_eq!(download(&alice, &mxc).await.status, 200);
    server.stop().await;
});

both_backends!(legacy_endpoints_freeze, |backend| async move {
    let Some(mut server) = TestServer::start_with(backend, |c| c.media.enable_authenticated_media = false).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let old = upload_ok(
        &alice,
        encode(gradient(64, 64), ImageFormat::Png),
        "image/png",
        Some("old.png"),
    )
    .await;
    let anonymous = server.client();
    let got = fetch(
        &anonymous,
        &format!("/_matrix/media/v3/download/{}", server_and_id(&old)),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.disposition().filename.as_deref(), Some("old.png"));
    assert_eq!(got.header("content-security-policy"), CSP);

    // Turning authenticated media on freezes the legacy endpoints: what was there stays.
    server.config.media.enable_authenticated_media = true;
    server.restart().await;
    let alice = Client {
        base: server.url(),
        ..alice
    };
    let anonymous = server.client();
    let new = upload_ok(
        &alice,
        encode(gradient(32, 32), ImageFormat::Png),
        "image/png",
        Some("new.png"),
    )
    .await;
    let got = fetch(
        &anonymous,
        &format!("/_matrix/media/v3/download/{}", server_and_id(&old)),
    )
    .await;
    assert_eq!(got.status, 200);
    let got = fetch(
        &anonymous,
        &format!(
            "/_matrix/media/v3/thumbnail/{}?width=16&height=16&method=crop",
            server_and_id(&old)
        ),
    )
    .await;
    assert_eq!((got.status, got.image().width()), (200, 16));
    let got = fetch(
        &anonymous,
        &format!("/_matrix/media/v3/download/{}", server_and_id(&new)),
    )
    .await;
    assert_eq!((got.status, got.json()["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    assert_eq!(download(&alice, &new).await.status, 200);
    assert_eq!(download(&alice, &old).await.status, 200);
    server.stop().await;
});

// ----- thumbnails -----

both_backends!(thumbnails_scale_and_crop, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;

    // PNG 400x200.
    let png = upload_ok(
        &alice,
        encode(gradient(400, 200), ImageFormat::Png),
        "image/png",
        Some("g.png"),
    )
    .await;
    for (query, dims) in [
        ("width=100&height=100&method=scale", (100, 50)),
        ("width=100&height=100", (100, 50)),
        ("width=100&height=100&method=crop", (100, 100)),
        ("width=50&height=120&method=crop", (50, 120)),
        // Never upscaled.
        ("width=800&height=800&method=scale", (400, 200)),
        ("width=800&height=800&method=crop", (200, 200)),
    ] {
        let got = thumbnail(&alice, &png, query).await;
        assert_eq!(got.status, 200, "{query}: {:?}", got.json());
        assert_eq!(got.header("content-type"), "image/png", "{query}");
        assert_eq!(image::guess_format(&got.body).unwrap(), ImageFormat::Png);
        let image = got.image();
        assert_eq!((image.width(), image.height()), dims, "{query}");
        assert_eq!(got.disposition().disposition_type, ContentDispositionType::Inline);
        assert_eq!(got.header("content-security-policy"), CSP);
    }
    // Crop keeps the middle: a 100x100 crop of a 400x200 gradient starts at x = 100 of the
    // original (red channel = x), scaled by half.
    let crop = thumbnail(&alice, &png, "width=100&height=100&method=crop")
        .await
        .image()
        .to_rgb8();
    let red = crop.get_pixel(0, 50)[0];
    assert!((95..=110).contains(&red), "crop starts at the centre, red = {red}");

    // JPEG 300x600 stays JPEG.
    let jpeg = upload_ok(
        &alice,
        encode(gradient(300, 600), ImageFormat::Jpeg),
        "image/jpeg",
        Some("g.jpg"),
    )
    .await;
    let got = thumbnail(&alice, &jpeg, "width=64&height=64&method=scale").await;
    assert_eq!((got.status, got.header("content-type")), (200, "image/jpeg"));
    assert_eq!(image::guess_format(&got.body).unwrap(), ImageFormat::Jpeg);
    let image = got.image();
    assert_eq!((image.width(), image.height()), (32, 64));
    let image = thumbnail(&alice, &jpeg, "width=64&height=64&method=crop").await.image();
    assert_eq!((image.width(), image.height()), (64, 64));

    // WebP.
    let webp = upload_ok(&alice, encode(gradient(120, 90), ImageFormat::WebP), "image/webp", None).await;
    let image = thumbnail(&alice, &webp, "width=60&height=60&method=scale")
        .await
        .image();
    assert_eq!((image.width(), image.height()), (60, 45));

    // Bad parameters.
    for query in [
        "width=0&height=10",
        "width=10&height=10&method=stretch",
        "height=10",
        "width=-1&height=10",
    ] {
        let got = thumbnail(&alice, &png, query).await;
        assert_eq!(got.status, 400, "{query}: {:?}", got.json());
    }
    server.stop().await;
});

both_backends!(thumbnails_of_gifs, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let gif_bytes = animated_gif(120, 80);
    let gif = upload_ok(&alice, gif_bytes.clone(), "image/gif", Some("anim.gif")).await;

    // A still thumbnail of the first frame (red).
    let got = thumbnail(&alice, &gif, "width=60&height=60&method=scale").await;
    assert_eq!((got.status, got.header("content-type")), (200, "image/png"));
    let image = got.image().to_rgba8();
    assert_eq!((image.width(), image.height()), (60, 40));
    assert_eq!(image.get_pixel(30, 20).0, [255, 0, 0, 255], "first frame");

    // animated=true: a small animated GIF is served as it is.
    let got = thumbnail(&alice, &gif, "width=60&height=60&method=scale&animated=true").await;
    assert_eq!((got.status, got.header("content-type")), (200, "image/gif"));
    assert_eq!(got.body, gif_bytes);
    // animated=true on a still PNG: an ordinary thumbnail.
    let png = upload_ok(&alice, encode(gradient(100, 100), ImageFormat::Png), "image/png", None).await;
    let got = thumbnail(&alice, &png, "width=50&height=50&animated=true").await;
    assert_eq!((got.status, got.header("content-type")), (200, "image/png"));
    assert_eq!(got.image().width(), 50);
    // A "GIF" that is not one is never sent back as an animation.
    let fake = upload_ok(&alice, b"GIF? no.".to_vec(), "image/gif", None).await;
    let got = thumbnail(&alice, &fake, "width=50&height=50&animated=true").await;
    assert_eq!((got.status, got.json()["errcode"].as_str()), (400, Some("M_UNKNOWN")));
    server.stop().await;
});

both_backends!(non_images_cannot_be_thumbnailed, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    for (bytes, content_type) in [
        (b"just text".to_vec(), "text/plain"),
        (b"\x89PNG but not really".to_vec(), "image/png"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(), "image/svg+xml"),
        (encode(gradient(10, 10), ImageFormat::Png)[..40].to_vec(), "image/png"),
    ] {
        let mxc = upload_ok(&alice, bytes.clone(), content_type, Some("x")).await;
        let got = thumbnail(&alice, &mxc, "width=32&height=32").await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (400, Some("M_UNKNOWN")),
            "{content_type}"
        );
        // The download still works.
        let got = download(&alice, &mxc).await;
        assert_eq!((got.status, got.body), (200, bytes));
    }
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media_thumbnails").await, 0);
    server.stop().await;
});

both_backends!(thumbnails_are_generated_once, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let png = upload_ok(&alice, encode(gradient(300, 300), ImageFormat::Png), "image/png", None).await;
    assert_eq!(content_files(&server), 1);

    let first = thumbnail(&alice, &png, "width=64&height=64&method=crop").await;
    assert_eq!(first.status, 200);
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media_thumbnails").await, 1);
    assert_eq!(content_files(&server), 2);
    // The same thumbnail again (by anyone) is served from storage, byte for byte.
    let again = thumbnail(&bob, &png, "width=64&height=64&method=crop").await;
    assert_eq!(again.body, first.body);
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media_thumbnails").await, 1);
    assert_eq!(content_files(&server), 2);
    // Another size or method is another thumbnail.
    thumbnail(&alice, &png, "width=64&height=64&method=scale").await;
    thumbnail(&alice, &png, "width=32&height=32&method=crop").await;
    assert_eq!(count_rows(&server, "SELECT COUNT(*) FROM media_thumbnails").await, 3);
    server.stop().await;
});

// ----- URL previews -----

both_backends!(url_preview_is_off_by_default, |backend| async move {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    for path in ["/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url"] {
        let got = fetch(&alice, &format!("{path}?url=https%3A%2F%2Fexample.org%2F")).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (404, Some("M_UNRECOGNIZED")),
            "{path}"
        );
    }
    server.stop().await;
});

/// A small website on loopback for previews; counts fetches of `/page`.
async fn start_site() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use axum::{http::header, response::IntoResponse, routing::get, Router};
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let png = encode(gradient(64, 48), ImageFormat::Png);
    let page = r#"<!doctype html><html><head>
        <title>Fallback title</title>
        <meta property="og:title" content="Weft &amp; friends">
        <meta property="og:description" content="A page about a homeserver">
        <meta property="og:image" content="/image.png">
        <meta property="og:site_name" content="Example">
        </head><body>hello</body></html>"#;
    let counter = hits.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) }
            }),
        )
        .route(
            "/plain",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><title>Just a\n title</title><meta name=\"description\" content=\"desc\"></html>",
                )
            }),
        )
        .route(
            "/image.png",
            get(move || async move { ([(header::CONTENT_TYPE, "image/png")], png.clone()) }),
        )
        .route(
            "/redirect",
            get(|| async { (axum::http::StatusCode::FOUND, [(header::LOCATION, "/page")]).into_response() }),
        )
        .route(
            "/escape",
            get(move || async move {
                // A hop to an address that is not allow-listed.
                let to = format!("http://127.0.0.2:{}/page", addr.port());
                (axum::http::StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

async fn preview(client: &Client, url: &str) -> Fetched {
    fetch(
        client,
        &format!("/_matrix/client/v1/media/preview_url?url={}", urlencode(url)),
    )
    .await
}

both_backends!(url_preview_of_allowlisted_site, |backend| async move {
    let (site, hits) = start_site().await;
    let Some(server) = TestServer::start_with(backend, |c| {
        c.media.url_preview_enabled = true;
        c.media.url_preview_ip_allowlist = vec!["127.0.0.1/32".into()];
    })
    .await
    else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    let url = format!("http://{site}/page");
    let got = preview(&alice, &url).await;
    assert_eq!(got.status, 200, "{:?}", got.json());
    let og = got.json();
    assert_eq!(og["og:title"], "Weft & friends", "{og}");
    assert_eq!(og["og:description"], "A page about a homeserver");
    assert_eq!(og["og:site_name"], "Example");
    assert_eq!(og["og:image:width"], 64);
    assert_eq!(og["og:image:height"], 48);
    assert_eq!(og["og:image:type"], "image/png");
    let image = og["og:image"].as_str().expect("og:image");
    assert!(image.starts_with("mxc://weft.test/"), "{image}");
    let got = download(&alice, image).await;
    assert_eq!((got.status, got.image().width()), (200, 64));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Cached: the site is not asked again; the legacy endpoint answers the same.
    let legacy = fetch(
        &alice,
        &format!("/_matrix/media/v3/preview_url?url={}", urlencode(&url)),
    )
    .await;
    assert_eq!(
        (legacy.status, legacy.json()["og:title"].as_str()),
        (200, Some("Weft & friends"))
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Fallbacks, redirects within the allowed range, and a direct image.
    let og = preview(&alice, &format!("http://{site}/plain")).await.json();
    assert_eq!(
        (og["og:title"].as_str(), og["og:description"].as_str()),
        (Some("Just a title"), Some("desc")),
        "{og}"
    );
    let og = preview(&alice, &format!("http://{site}/redirect")).await.json();
    assert_eq!(og["og:title"], "Weft & friends", "{og}");
    let og = preview(&alice, &format!("http://{site}/image.png")).await.json();
    assert_eq!(
        (og["og:image:width"].as_u64(), og["og:image:type"].as_str()),
        (Some(64), Some("image/png")),
        "{og}"
    );

    // A redirect hop to a blocked address is refused, although the first hop was allowed.
    let got = preview(&alice, &format!("http://{site}/escape")).await;
    assert_eq!(
        (got.status, got.json()["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{:?}",
        got.json()
    );
    // So are other loopback addresses, names resolving to them, and IPv4-mapped forms.
    for url in [
        format!("http://127.0.0.2:{}/page", site.port()),
        format!("http://[::1]:{}/page", site.port()),
        format!("http://[::ffff:127.0.0.2]:{}/page", site.port()),
    ] {
        let got = preview(&alice, &url).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{url}: {:?}",
            got.json()
        );
    }
    // Not a URL.
    for url in ["not a url", "ftp://example.org/file", "file:///etc/passwd"] {
        assert_eq!(preview(&alice, url).await.status, 400, "{url}");
    }
    server.stop().await;
});

both_backends!(url_preview_refuses_loopback, |backend| async move {
    let (site, hits) = start_site().await;
    let Some(server) = TestServer::start_with(backend, |c| c.media.url_preview_enabled = true).await else {
        return;
    };
    let alice = server.register("alice", "pw").await;
    for url in [
        format!("http://{site}/page"),
        format!("http://localhost:{}/page", site.port()),
    ] {
        let got = preview(&alice, &url).await;
        assert_eq!(
            (got.status, got.json()["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{url}: {:?}",
            got.json()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the site was never contacted");
    server.stop().await;
});

#[tokio::test]
async fn config_rejects_bad_ip_ranges() {
    let dir = std::env::temp_dir().join(format!("weft-media-config-{}", weft_core::util::random_string(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weft.toml");
    std::fs::write(&path, "[media]\nurl_preview_ip_allowlist = [\"127.0.0.1/40\"]\n").unwrap();
    let err = weft::config::Config::load(Some(&path)).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("url_preview_ip_allowlist"), "{err}");
}
