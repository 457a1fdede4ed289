// End-to-end encryption through matrix-js-sdk's Rust crypto (what Element Web runs), against a
// real weft server: two users exchange encrypted messages and decrypt each other's, cross-signing
// is bootstrapped (with password UIA when keys are replaced), a key backup is created, and a new
// device of the same user restores the room keys from the backup and decrypts old messages.
//
// Run by server/tests/it/js_sdk_e2ee.rs with WEFT_URL set to the server's base URL. By hand:
//   WEFT_URL=http://127.0.0.1:8008 node --test e2ee.test.mjs

import "fake-indexeddb/auto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, webcrypto } from "node:crypto";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.env.WEFT_URL;

/** How long any single wait may take: crypto round trips take several syncs. */
const WAIT_MS = 20000;

logger.setLevel("warn");
globalThis.crypto ??= webcrypto;

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
    return { username, password, userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
}

/** A new device of an existing account. */
async function login(account) {
    const anon = sdk.createClient({ baseUrl });
    const res = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: account.username },
        password: account.password,
        initial_device_display_name: "restored device",
    });
    return { ...account, accessToken: res.access_token, deviceId: res.device_id };
}

/** Resolves with `check()`'s value once it is truthy (checked every 100 ms), else fails naming `what`. */
async function until(check, what, describe = () => "", ms = WAIT_MS) {
    const end = Date.now() + ms;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${describe()}`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

/** A client with Rust crypto and its sync loop running, once the first sync is done. */
async function startClient(account, running) {
    const client = sdk.createClient({
        baseUrl,
        userId: account.userId,
        accessToken: account.accessToken,
        deviceId: account.deviceId,
    });
    running.add(client);
    client.syncErrors = [];
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
        if (state === sdk.SyncState.Error) client.syncErrors.push(String(data?.error?.data ? JSON.stringify(data.error.data) : data?.error));
    });
    await client.initRustCrypto({ useIndexedDB: false });
    await client.startClient({ initialSyncLimit: 20 });
    await until(
        () => ["PREPARED", "SYNCING"].includes(client.getSyncState()),
        `the first sync of ${account.userId}`,
        () => `state ${client.getSyncState()}, errors ${JSON.stringify(client.syncErrors)}`,
    );
    return client;
}

/** Password UIA for /keys/device_signing/upload, the way Element does it. */
function passwordAuth(account) {
    return async (makeRequest) => {
        try {
            await makeRequest(null);
        } catch (err) {
            if (err.httpStatus !== 401 || !err.data?.flows) throw err;
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: account.username },
                password: account.password,
                session: err.data.session,
            });
        }
    };
}

/** The decrypted body of the message with `eventId` in `client`'s view of the room, if any. */
function decryptedBody(client, roomId, eventId) {
    const event = client.getRoom(roomId)?.findEventById(eventId);
    if (!event || event.isDecryptionFailure() || event.isBeingDecrypted()) return undefined;
    return event.getClearContent()?.body;
}

function describeRoom(client, roomId) {
    const room = client.getRoom(roomId);
    if (!room) return "no room";
    return JSON.stringify(
        room.getLiveTimeline().getEvents().map((e) => [e.getId(), e.getWireType(), e.getType(), e.isDecryptionFailure() ? "UTD" : e.getContent().body]),
    );
}

test("end-to-end encryption through matrix-js-sdk's Rust crypto", { timeout: 240_000 }, async (t) => {
    assert.ok(baseUrl, "WEFT_URL must be set to the homeserver's base URL");
    const aliceAccount = await register("alice");
    const bobAccount = await register("bob");
    const running = new Set();
    t.after(() => running.forEach((c) => c.stopClient()));

    const alice = await startClient(aliceAccount, running);
    const bob = await startClient(bobAccount, running);
    let roomId;
    const sent = {};

    await t.test("device keys are published and visible to the other user", async () => {
        await until(async () => {
            const res = await bob.downloadKeysForUsers([aliceAccount.userId]);
            return res.device_keys?.[aliceAccount.userId]?.[aliceAccount.deviceId];
        }, "alice's device keys in /keys/query");
        const counts = await alice.uploadKeysRequest({});
        assert.ok(counts.one_time_key_counts.signed_curve25519 > 0, `one-time keys uploaded: ${JSON.stringify(counts)}`);
    });

    await t.test("cross-signing is bootstrapped, and replacing it needs password UIA", async () => {
        await alice.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(aliceAccount) });
        const status = await alice.getCrypto().getCrossSigningStatus();
        assert.ok(status.publicKeysOnDevice && status.privateKeysInSecretStorage === false, JSON.stringify(status));
        assert.ok(await alice.getCrypto().isCrossSigningReady(), `cross-signing ready: ${JSON.stringify(status)}`);
        // The device signature is uploaded right after the keys; the client learns of it by
        // re-querying its own keys when the device list change comes down /sync.
        await until(
            async () => (await alice.getCrypto().getDeviceVerificationStatus(aliceAccount.userId, aliceAccount.deviceId))?.signedByOwner,
            "alice's device to be signed by her self-signing key",
            () => "",
        );

        // Replacing the keys without auth is refused; with the password it works.
        await assert.rejects(
            alice.getCrypto().bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: async (makeRequest) => makeRequest(null) }),
            (err) => err.httpStatus === 401,
        );
        const before = await alice.getCrypto().getCrossSigningKeyId();
        await alice.getCrypto().bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: passwordAuth(aliceAccount) });
        // Ready again once the client has re-read its own (new) keys from /keys/query.
        await until(() => alice.getCrypto().isCrossSigningReady(), "cross-signing to be ready with the new keys");
        const after = await alice.getCrypto().getCrossSigningKeyId();
        assert.notEqual(after, before, "the master key was replaced");
        const published = await alice.downloadKeysForUsers([aliceAccount.userId]);
        assert.ok(
            Object.keys(published.master_keys?.[aliceAccount.userId]?.keys ?? {}).includes(`ed25519:${after}`),
            `the server has the new master key: ${JSON.stringify(published.master_keys)}`,
        );

        await bob.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(bobAccount) });
    });

    await t.test("alice and bob exchange messages in an encrypted room and decrypt each other's", async () => {
        ({ room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PrivateChat,
            invite: [bobAccount.userId],
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
        }));
        await until(() => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
        await bob.joinRoom(roomId);
        await until(
            () => alice.getRoom(roomId)?.getMember(bobAccount.userId)?.membership === "join",
            "alice to see bob join",
        );
        await until(async () => alice.getCrypto().isEncryptionEnabledInRoom(roomId), "alice's room to be encrypted");

        sent.fromAlice = (await alice.sendTextMessage(roomId, "hello bob, secretly")).event_id;
        const received = await until(
            () => decryptedBody(bob, roomId, sent.fromAlice),
            "bob to decrypt alice's message",
            () => describeRoom(bob, roomId),
        );
        assert.equal(received, "hello bob, secretly");
        const wire = bob.getRoom(roomId).findEventById(sent.fromAlice);
        assert.equal(wire.getWireType(), "m.room.encrypted", "the server only saw ciphertext");

        sent.fromBob = (await bob.sendTextMessage(roomId, "hi alice, also secret")).event_id;
        const reply = await until(
            () => decryptedBody(alice, roomId, sent.fromBob),
            "alice to decrypt bob's message",
            () => describeRoom(alice, roomId),
        );
        assert.equal(reply, "hi alice, also secret");

        // Sharing a room, bob tracks alice's devices and sees them cross-signed by her.
        await until(
            async () => (await bob.getCrypto().getDeviceVerificationStatus(aliceAccount.userId, aliceAccount.deviceId))?.signedByOwner,
            "bob to see alice's device signed by her self-signing key",
        );
    });

    let backupKey;
    let backupVersion;
    await t.test("alice creates a key backup and her room keys are uploaded to it", async () => {
        await alice.getCrypto().resetKeyBackup();
        backupVersion = await until(() => alice.getCrypto().getActiveSessionBackupVersion(), "an active backup version");
        backupKey = await alice.getCrypto().getSessionBackupPrivateKey();
        assert.ok(backupKey instanceof Uint8Array, "the backup decryption key is cached");
        const info = await alice.getCrypto().getKeyBackupInfo();
        assert.equal(info.version, backupVersion);
        const trust = await alice.getCrypto().isKeyBackupTrusted(info);
        assert.ok(trust.trusted, `alice trusts her backup: ${JSON.stringify(trust)}`);
        // Both megolm sessions (alice's outbound, bob's inbound) end up in the backup.
        await until(
            async () => (await alice.http.authedRequest(sdk.Method.Get, "/room_keys/version", undefined, undefined, {})).count >= 2,
            "two room keys in the backup",
        );
    });

    await t.test("a new device of alice restores the keys from the backup and decrypts old messages", async () => {
        const alice2Account = await login(aliceAccount);
        const alice2 = await startClient(alice2Account, running);
        await until(() => alice2.getRoom(roomId)?.findEventById(sent.fromBob), "the old messages on the new device", () => describeRoom(alice2, roomId));
        assert.equal(decryptedBody(alice2, roomId, sent.fromBob), undefined, "the new device cannot decrypt before restoring");

        await alice2.getCrypto().storeSessionBackupPrivateKey(backupKey, backupVersion);
        const result = await alice2.getCrypto().restoreKeyBackup();
        assert.ok(result.imported >= 2, `keys restored: ${JSON.stringify(result)}`);
        for (const [id, body] of [
            [sent.fromAlice, "hello bob, secretly"],
            [sent.fromBob, "hi alice, also secret"],
        ]) {
            const text = await until(() => decryptedBody(alice2, roomId, id), `the new device to decrypt ${id}`, () => describeRoom(alice2, roomId));
            assert.equal(text, body);
        }
    });
});
