//! History and media between weft and Synapse (`harness_synapse`): a user who joins the other
//! server's room late pages back through what was said before, each way (Synapse backfilling
//! from weft's `/backfill`, weft from Synapse's), and media uploaded on either is downloaded
//! (and thumbnailed) through the other's client API over the federation media endpoints.
//!
//! Without `WEFT_TEST_SYNAPSE` (set by .ci/run) these tests print a SKIPPED line and pass.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::{json, Value};

use crate::{
    both_backends,
    federation_rooms::{enc, eventually, send_text},
    harness::{Backend, Client},
    harness_federation::{FederatedServer, TestCa},
    harness_synapse::{synapse_python, Synapse},
    rooms::create_room,
};

async fn weft_and_synapse(backend: Backend) -> Option<(TestCa, FederatedServer, Synapse)> {
    let python = synapse_python()?;
    let ca = TestCa::new();
    let weft = FederatedServer::start(backend, &ca).await?;
    let synapse = Synapse::start(&python, &ca).await;
    Some((ca, weft, synapse))
}

/// The message bodies `client` gets paging the room backwards `limit` at a time to its start,
/// oldest first.
async fn page_back_bodies(client: &Client, room: &str, limit: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", enc(room));
        if let Some(token) = &from {
            path.push_str(&format!("&from={}", enc(token)));
        }
        let (status, page) = client.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        bodies.extend(
            chunk
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)),
        );
        match page["end"].as_str() {
            // Synapse may answer an empty chunk with an `end` while it has nothing older.
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    bodies.reverse();
    bodies
}

async fn join_via(client: &Client, room: &str, via: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
}

async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str) -> String {
    let res = client
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=shared.png", client.base))
        .bearer_auth(client.token.as_deref().unwrap())
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    body["content_uri"].as_str().unwrap().to_owned()
}

async fn get_bytes(client: &Client, path: &str) -> (u16, Vec<u8>) {
    let res = client
        .http
        .get(format!("{}{path}", client.base))
        .bearer_auth(client.token.as_deref().unwrap())
        .send()
        .await
        .expect("request sent");
    (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
}

fn png(w: u32, h: u32, tint: u8) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, tint])
    }));
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
    out
}

both_backends!(history_and_media_between_weft_and_synapse, |backend| async move {
    let Some((_ca, weft, synapse)) = weft_and_synapse(backend).await else {
        return;
    };
    let alice = weft.register("alice", "password-alice").await;
    let sam = synapse.register("sam").await;
    let failed = |what: &str| format!("{what}\n{}", synapse.log_tail(40));

    // Synapse joins a weft room late and pages back through what was said before.
    let weft_room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let on_weft: Vec<String> = (0..25).map(|i| format!("said on weft {i}")).collect();
    for body in &on_weft {
        send_text(&alice, &weft_room, body).await;
    }
    join_via(&sam, &weft_room, weft.server_name()).await;
    let got = eventually("Synapse to backfill weft's history", || async {
        let got = page_back_bodies(&sam, &weft_room, 10).await;
        (got.len() == on_weft.len()).then_some(got)
    })
    .await;
    assert_eq!(got, on_weft, "{}", failed("Synapse's view of weft's history"));

    // Weft joins a Synapse room late and pages back through what was said before.
    let synapse_room = create_room(&sam, json!({ "preset": "public_chat" })).await;
    let on_synapse: Vec<String> = (0..25).map(|i| format!("said on Synapse {i}")).collect();
    for body in &on_synapse {
        send_text(&sam, &synapse_room, body).await;
    }
    join_via(&alice, &synapse_room, &synapse.server_name).await;
    let got = page_back_bodies(&alice, &synapse_room, 10).await;
    assert_eq!(got, on_synapse, "{}", failed("weft's view of Synapse's history"));

    // Media uploaded on weft, downloaded through Synapse.
    let weft_picture = png(64, 32, 10);
    let mxc = upload(&alice, weft_picture.clone(), "image/png").await;
    let path = format!(
        "/_matrix/client/v1/media/download/{}",
        mxc.strip_prefix("mxc://").unwrap()
    );
    let (status, body) = get_bytes(&sam, &path).await;
    assert_eq!(status, 200, "{}", failed(&String::from_utf8_lossy(&body)));
    assert_eq!(body, weft_picture);

    // Media uploaded on Synapse, downloaded and thumbnailed through weft.
    let synapse_picture = png(80, 40, 200);
    let mxc = upload(&sam, synapse_picture.clone(), "image/png").await;
    let server_and_id = mxc.strip_prefix("mxc://").unwrap().to_owned();
    let (status, body) = get_bytes(&alice, &format!("/_matrix/client/v1/media/download/{server_and_id}")).await;
    assert_eq!(status, 200, "{}", failed(&String::from_utf8_lossy(&body)));
    assert_eq!(body, synapse_picture);
    let (status, body) = get_bytes(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{server_and_id}?width=40&height=40&method=scale"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let thumb = image::load_from_memory(&body).expect("a thumbnail");
    assert_eq!((thumb.width(), thumb.height()), (40, 20));

    weft.stop().await;
});
