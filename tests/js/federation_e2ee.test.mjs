// End-to-end encryption between users of two federated weft servers, through matrix-js-sdk's
// Rust crypto (what Element Web runs): alice on one server and bob on the other bootstrap
// cross-signing, share an encrypted room and decrypt each other's messages (their keys queried
// and claimed across servers, room keys sent as to-device messages across servers); then bob
// signs in on a second device, alice's client learns of it from her own server (device list
// updates over federation) and shares the room key with it, and the new device decrypts the
// messages sent after it appeared; the same for a second device of alice's, learnt by bob.
//
// Run by server/tests/it/js_sdk_federation_e2ee.rs with WEFT_URL/WEFT_URL_2 set to the two
// servers' client base URLs; server 2 may be a Synapse, with BOB_USERNAME/BOB_PASSWORD naming
// an account registered there beforehand. By hand:
//   WEFT_URL=http://127.0.0.1:8008 WEFT_URL_2=http://127.0.0.1:8009 node --test federation_e2ee.test.mjs

import "fake-indexeddb/auto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, webcrypto } from "node:crypto";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl1 = process.env.WEFT_URL;
const baseUrl2 = process.env.WEFT_URL_2;

/** How long any single wait may take: crypto round trips across servers take several syncs. */
const WAIT_MS = 30000;

logger.setLevel("warn");
globalThis.crypto ??= webcrypto;

/** A fresh account on the server at `baseUrl`, registered with the m.login.dummy UIA dance. */
async function register(baseUrl, localpart) {
    const anon = sdk.createClient({ baseUrl });
    const username = `${localpart}_${randomBytes(4).toString("hex")}`;
    const password = `pw-${randomBytes(9).toString("base64url")}`;
    let session;
    await assert.rejects(anon.registerRequest({ username, password }), (err) => {
        session = err.data?.session;
        return err.httpStatus === 401 && typeof session === "string";
    });
    const res = await anon.registerRequest({ username, password, auth: { type: "m.login.dummy", session } });
    return { baseUrl, username, password, userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
}

/** A new device of an existing account. */
async function login(account) {
    const anon = sdk.createClient({ baseUrl: account.baseUrl });
    const res = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: account.username },
        password: account.password,
        initial_device_display_name: "second device",
    });
    return { ...account, userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
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
        baseUrl: account.baseUrl,
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

/** The device IDs of `userId` that `client`'s crypto knows. */
async function knownDevices(client, userId) {
    const devices = await client.getCrypto().getUserDeviceInfo([userId]);
    return [...(devices.get(userId)?.keys() ?? [])];
}

test("end-to-end encryption across two servers", { timeout: 240_000 }, async (t) => {
    assert.ok(baseUrl1 && baseUrl2, "WEFT_URL and WEFT_URL_2 must be set to the two servers' base URLs");
    const aliceAccount = await register(baseUrl1, "alice");
    // Server 2 may be one where the test cannot register (Synapse): then bob's account is
    // made beforehand and given by name and password.
    const bobAccount = process.env.BOB_USERNAME
        ? await login({ baseUrl: baseUrl2, username: process.env.BOB_USERNAME, password: process.env.BOB_PASSWORD })
        : await register(baseUrl2, "bob");
    const running = new Set();
    t.after(() => running.forEach((c) => c.stopClient()));

    const alice = await startClient(aliceAccount, running);
    const bob = await startClient(bobAccount, running);
    let roomId;
    const sent = {};

    await t.test("each sees the other's device keys and cross-signing through the other's server", async () => {
        await alice.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(aliceAccount) });
        await bob.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(bobAccount) });
        const res = await until(async () => {
            const res = await bob.downloadKeysForUsers([aliceAccount.userId]);
            return res.device_keys?.[aliceAccount.userId]?.[aliceAccount.deviceId] && res.master_keys?.[aliceAccount.userId] && res;
        }, "alice's device and master keys in bob's /keys/query");
        assert.deepEqual(res.failures ?? {}, {});
    });

    await t.test("alice and bob exchange messages in an encrypted room and decrypt each other's", async () => {
        ({ room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PrivateChat,
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
        }));
        // Invited afterwards: createRoom's `invite` does not reach other servers yet.
        await alice.invite(roomId, bobAccount.userId);
        await until(() => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
        await bob.joinRoom(roomId);
        await until(
            () => alice.getRoom(roomId)?.getMember(bobAccount.userId)?.membership === "join",
            "alice to see bob join",
        );
        await until(async () => alice.getCrypto().isEncryptionEnabledInRoom(roomId), "alice's room to be encrypted");

        sent.fromAlice = (await alice.sendTextMessage(roomId, "hello bob, across servers")).event_id;
        const received = await until(
            () => decryptedBody(bob, roomId, sent.fromAlice),
            "bob to decrypt alice's message",
            () => describeRoom(bob, roomId),
        );
        assert.equal(received, "hello bob, across servers");
        assert.equal(bob.getRoom(roomId).findEventById(sent.fromAlice).getWireType(), "m.room.encrypted");

        sent.fromBob = (await bob.sendTextMessage(roomId, "hi alice, from the other server")).event_id;
        const reply = await until(
            () => decryptedBody(alice, roomId, sent.fromBob),
            "alice to decrypt bob's message",
            () => describeRoom(alice, roomId),
        );
        assert.equal(reply, "hi alice, from the other server");

        // Alice's client sees bob's device signed by his own self-signing key, as his server has it.
        await until(
            async () => (await alice.getCrypto().getDeviceVerificationStatus(bobAccount.userId, bobAccount.deviceId))?.signedByOwner,
            "alice to see bob's device signed by his self-signing key",
        );
    });

    await t.test("bob's second device, added later, is learnt by alice and reads new messages", async () => {
        const bob2Account = await login(bobAccount);
        const bob2 = await startClient(bob2Account, running);
        await until(
            async () => (await knownDevices(alice, bobAccount.userId)).includes(bob2Account.deviceId),
            "alice's client to learn of bob's second device",
            () => "",
        );
        sent.later = (await alice.sendTextMessage(roomId, "for both of bob's devices")).event_id;
        const text = await until(
            () => decryptedBody(bob2, roomId, sent.later),
            "bob's second device to decrypt alice's new message",
            () => describeRoom(bob2, roomId),
        );
        assert.equal(text, "for both of bob's devices");
        const first = await until(() => decryptedBody(bob, roomId, sent.later), "bob's first device to decrypt it too");
        assert.equal(first, "for both of bob's devices");
    });

    await t.test("alice's second device, added later, is learnt by bob and reads his new messages", async () => {
        const alice2Account = await login(aliceAccount);
        const alice2 = await startClient(alice2Account, running);
        await until(
            async () => (await knownDevices(bob, aliceAccount.userId)).includes(alice2Account.deviceId),
            "bob's client to learn of alice's second device",
            () => "",
        );
        sent.reply = (await bob.sendTextMessage(roomId, "for both of alice's devices")).event_id;
        const text = await until(
            () => decryptedBody(alice2, roomId, sent.reply),
            "alice's second device to decrypt bob's new message",
            () => describeRoom(alice2, roomId),
        );
        assert.equal(text, "for both of alice's devices");
    });
});
