// Media through matrix-js-sdk: upload an image with uploadContent, download it and a thumbnail
// through the authenticated media URLs the SDK builds (Matrix 1.11), as a client would.
//
// Run by server/tests/it/js_sdk_media.rs with WEFT_URL set to the server's base URL. By hand:
//   WEFT_URL=http://127.0.0.1:8008 node --test media.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { deflateSync } from "node:zlib";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.env.WEFT_URL;

logger.setLevel("warn");

/** A fresh account, registered with the m.login.dummy UIA dance. */
async function register(localpart) {
    const anon = sdk.createClient({ baseUrl });
    const username = `${localpart}_${randomBytes(4).toString("hex")}`;
    const password = `pw-${randomBytes(9).toString("base64url")}`;
    let session;
    await assert.rejects(anon.registerRequest({ username, password }), (err) => {
        session = err.data?.session;
        return err.httpStatus === 401 && typeof session === "string";
    });
    const res = await anon.registerRequest({ username, password, auth: { type: "m.login.dummy", session } });
    return { userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
}

// ----- a tiny PNG encoder (8-bit RGB, no filtering) -----

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
});

function crc32(bytes) {
    let c = 0xffffffff;
    for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
}

/** A `width`x`height` gradient PNG. */
function makePng(width, height) {
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(width, 0);
    ihdr.writeUInt32BE(height, 4);
    ihdr[8] = 8; // bit depth
    ihdr[9] = 2; // RGB
    const raw = Buffer.alloc(height * (1 + width * 3));
    for (let y = 0; y < height; y++) {
        const row = y * (1 + width * 3);
        raw[row] = 0; // filter: none
        for (let x = 0; x < width; x++) {
            raw[row + 1 + x * 3] = (x * 4) & 0xff;
            raw[row + 2 + x * 3] = (y * 4) & 0xff;
            raw[row + 3 + x * 3] = 128;
        }
    }
    const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    return Buffer.concat([signature, chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

/** Width and height from a PNG's IHDR. */
function pngSize(bytes) {
    assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "a PNG signature");
    return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

async function get(url, accessToken) {
    const headers = accessToken ? { Authorization: `Bearer ${accessToken}` } : {};
    const res = await fetch(url, { headers });
    return { res, bytes: Buffer.from(await res.arrayBuffer()) };
}

test("media through matrix-js-sdk", async (t) => {
    assert.ok(baseUrl, "WEFT_URL must be set to the homeserver's base URL");
    const account = await register("media");
    const client = sdk.createClient({ baseUrl, ...account });
    const png = makePng(64, 32);
    let mxc;

    await t.test("media config on the authenticated endpoint", async () => {
        const config = await client.getMediaConfig(true);
        assert.ok(config["m.upload.size"] > png.length, JSON.stringify(config));
    });

    await t.test("uploadContent", async () => {
        const res = await client.uploadContent(new Blob([png], { type: "image/png" }), { name: "gradient ✓.png" });
        mxc = res.content_uri;
        assert.match(mxc, /^mxc:\/\/[^/]+\/[A-Za-z0-9_-]+$/);
    });

    await t.test("download through the authenticated URL", async () => {
        const url = client.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
        assert.ok(url.includes("/_matrix/client/v1/media/download/"), url);
        const { res, bytes } = await get(url, account.accessToken);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("content-type"), "image/png");
        assert.ok(Buffer.compare(bytes, png) === 0, "the same bytes come back");
        assert.match(res.headers.get("content-disposition"), /^inline; filename\*=utf-8''gradient%20%E2%9C%93\.png$/);
        assert.equal(res.headers.get("cross-origin-resource-policy"), "cross-origin");

        // Without the access token, the authenticated URL is refused.
        const anonymous = await get(url);
        assert.equal(anonymous.res.status, 401);
    });

    await t.test("thumbnails through the authenticated URL", async () => {
        const scale = client.mxcUrlToHttp(mxc, 32, 32, "scale", false, true, true);
        assert.ok(scale.includes("/_matrix/client/v1/media/thumbnail/"), scale);
        const scaled = await get(scale, account.accessToken);
        assert.equal(scaled.res.status, 200);
        assert.equal(scaled.res.headers.get("content-type"), "image/png");
        assert.deepEqual(pngSize(scaled.bytes), { width: 32, height: 16 });

        const crop = client.mxcUrlToHttp(mxc, 16, 16, "crop", false, true, true);
        const cropped = await get(crop, account.accessToken);
        assert.equal(cropped.res.status, 200);
        assert.deepEqual(pngSize(cropped.bytes), { width: 16, height: 16 });
    });
});
