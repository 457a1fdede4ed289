// One user on each of two federated weft servers, each with matrix-js-sdk's own sync loop and
// room model, as Element Web runs it: alice (server 1) creates a public room with an alias, bob
// (server 2) joins it by the alias (resolved over federation), they talk and each sees the
// other's messages arrive through /sync in one order, both see both as members, and bob leaves.
//
// Run by server/tests/it/js_sdk_federation.rs with WEFT_URL / WEFT_SERVER_NAME set for the
// first server and WEFT_URL_2 / WEFT_SERVER_NAME_2 for the second (their plain client
// listeners; the servers reach each other over TLS). By hand:
//   WEFT_URL=http://127.0.0.1:8008 WEFT_SERVER_NAME=... WEFT_URL_2=http://127.0.0.1:8009 \
//   WEFT_SERVER_NAME_2=... node --test --test-force-exit federation.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const servers = [
    { baseUrl: process.env.WEFT_URL, name: process.env.WEFT_SERVER_NAME },
    { baseUrl: process.env.WEFT_URL_2, name: process.env.WEFT_SERVER_NAME_2 },
];

/** How long one wait may take: a federation round trip between the servers included. */
const WAIT_MS = 30_000;

logger.setLevel("warn");

/** A fresh account on `server`, registered with the m.login.dummy UIA dance. */
async function register(server, localpart) {
    const anon = sdk.createClient({ baseUrl: server.baseUrl });
    const username = `${localpart}_${randomBytes(4).toString("hex")}`;
    const password = `pw-${randomBytes(9).toString("base64url")}`;
    let session;
    await assert.rejects(anon.registerRequest({ username, password }), (err) => {
        session = err.data?.session;
        return err.httpStatus === 401 && typeof session === "string";
    });
    const res = await anon.registerRequest({ username, password, auth: { type: "m.login.dummy", session } });
    return { baseUrl: server.baseUrl, userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
}

/** Rejects after `ms` with a message naming what was awaited. */
function deadline(what, ms, cleanup) {
    let timer;
    const promise = new Promise((_, reject) => {
        timer = setTimeout(() => {
            cleanup?.();
            reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
        }, ms);
    });
    return { promise, cancel: () => clearTimeout(timer) };
}

/**
 * Resolves with `check()`'s value once it is truthy, re-checking whenever `emitter` emits one
 * of `names` and every 100 ms. On timeout, the message includes `describe()`.
 */
async function until(emitter, names, check, what, describe = () => "", ms = WAIT_MS) {
    const first = check();
    if (first) return first;
    let recheck;
    let interval;
    const stop = () => {
        clearInterval(interval);
        for (const name of names) emitter.off(name, recheck);
    };
    const timeout = deadline(what, ms, stop);
    const hit = new Promise((resolve) => {
        recheck = () => {
            const value = check();
            if (value) {
                stop();
                timeout.cancel();
                resolve(value);
            }
        };
        for (const name of names) emitter.on(name, recheck);
        interval = setInterval(recheck, 100);
    });
    try {
        return await Promise.race([hit, timeout.promise]);
    } catch (e) {
        e.message += `; last seen: ${describe()}`;
        throw e;
    }
}

/** A client for `account`, its sync loop started and its first sync PREPARED. */
async function startClient(account, running) {
    const client = sdk.createClient(account);
    running.add(client);
    client.syncErrors = [];
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
        const err = data?.error;
        if (state === sdk.SyncState.Error) client.syncErrors.push(err?.url ? `${err.httpStatus} ${err.url}: ${JSON.stringify(err.data)}` : String(err));
    });
    const prepared = until(
        client,
        [sdk.ClientEvent.Sync],
        () => client.getSyncState() === sdk.SyncState.Prepared || client.getSyncState() === sdk.SyncState.Syncing,
        `the first sync of ${account.userId} to be PREPARED`,
        () => `state ${client.getSyncState()}, errors ${JSON.stringify(client.syncErrors)}`,
    );
    // As Element Web: local echoes stay out of the timeline until their remote echo arrives.
    await client.startClient({ initialSyncLimit: 20, pendingEventOrdering: sdk.PendingEventOrdering.Detached });
    await prepared;
    return client;
}

function describeTimeline(room) {
    if (!room) return "no room";
    return JSON.stringify(
        room.getLiveTimeline().getEvents().map((e) => [e.getType(), e.getSender(), e.getContent().body ?? e.getContent().membership, e.getId()]),
    );
}

/** The m.room.message events of the room's live timeline that came back from the server. */
function messages(room) {
    return (room?.getLiveTimeline().getEvents() ?? [])
        .filter((e) => e.getType() === "m.room.message" && e.getId()?.startsWith("$") && e.status === null);
}

test("two servers: create, join by alias, talk and leave with matrix-js-sdk", { timeout: 240_000 }, async (t) => {
    for (const [i, server] of servers.entries()) {
        assert.ok(server.baseUrl && server.name, `server ${i + 1}'s WEFT_URL and WEFT_SERVER_NAME must be set`);
    }
    const aliceAccount = await register(servers[0], "alice");
    const bobAccount = await register(servers[1], "bob");
    assert.ok(aliceAccount.userId.endsWith(`:${servers[0].name}`), aliceAccount.userId);
    assert.ok(bobAccount.userId.endsWith(`:${servers[1].name}`), bobAccount.userId);
    const running = new Set();
    t.after(() => running.forEach((c) => c.stopClient()));
    const alice = await startClient(aliceAccount, running);
    const bob = await startClient(bobAccount, running);

    const aliasLocalpart = `fed_${randomBytes(4).toString("hex")}`;
    const alias = `#${aliasLocalpart}:${servers[0].name}`;
    const roomName = "Across servers ✓";
    let roomId;

    await t.test("alice creates a room with an alias; bob joins it by the alias from the other server", async () => {
        ({ room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PublicChat,
            visibility: sdk.Visibility.Public,
            room_alias_name: aliasLocalpart,
            name: roomName,
        }));
        await until(alice, [sdk.RoomEvent.Timeline], () => alice.getRoom(roomId)?.getMyMembership() === "join",
            "alice to be joined to her room", () => describeTimeline(alice.getRoom(roomId)));

        // Element Web resolves nothing itself: it hands the alias to /join.
        const joined = await bob.joinRoom(alias);
        assert.equal(joined.roomId, roomId, "the alias resolves to alice's room");
        const bobRoom = await until(
            bob,
            [sdk.RoomEvent.Timeline, sdk.ClientEvent.Room],
            () => {
                const room = bob.getRoom(roomId);
                return room?.getMyMembership() === "join" && room.name === roomName && room;
            },
            "bob's client to show him joined to the named room",
            () => describeTimeline(bob.getRoom(roomId)),
        );
        assert.equal(bobRoom.getCanonicalAlias(), alias, "the room's state came over with the join");
        assert.equal(bobRoom.getMember(aliceAccount.userId)?.membership, "join", "bob sees alice as a member");

        // Both member lists hold both users.
        const both = [aliceAccount.userId, bobAccount.userId].sort();
        const joinedMembers = (client) => () => {
            const ids = client.getRoom(roomId)?.getJoinedMembers().map((m) => m.userId).sort() ?? [];
            return JSON.stringify(ids) === JSON.stringify(both) && ids;
        };
        await until(alice, [sdk.RoomMemberEvent.Membership], joinedMembers(alice), "alice's member list to hold bob",
            () => describeTimeline(alice.getRoom(roomId)));
        await until(bob, [sdk.RoomMemberEvent.Membership], joinedMembers(bob), "bob's member list to hold both",
            () => describeTimeline(bob.getRoom(roomId)));
    });

    const conversation = ["alice: hello from server 1", "bob: hello from server 2", "alice: how is it over there?", "bob: fine, and federated"];

    await t.test("messages from both arrive in both clients' timelines through /sync, in one order", async () => {
        const arrivals = { alice: [], bob: [] };
        const listeners = [["alice", alice], ["bob", bob]].map(([name, client]) => {
            const listener = (event, room, toStart) => {
                if (room?.roomId === roomId && !toStart && event.getType() === "m.room.message") arrivals[name].push(event);
            };
            client.on(sdk.RoomEvent.Timeline, listener);
            return () => client.off(sdk.RoomEvent.Timeline, listener);
        });
        t.after(() => listeners.forEach((off) => off()));
        // A conversation: each line is sent once the previous one reached the other side.
        for (const [i, line] of conversation.entries()) {
            const [from, to] = line.startsWith("alice") ? [alice, bob] : [bob, alice];
            const { event_id: eventId } = await from.sendTextMessage(roomId, line);
            await until(to, [sdk.RoomEvent.Timeline], () => to.getRoom(roomId).findEventById(eventId),
                `line ${i} to reach the other server's client`, () => describeTimeline(to.getRoom(roomId)));
        }
        const settled = (client) => () => {
            const list = messages(client.getRoom(roomId));
            return list.length >= conversation.length && list;
        };
        const aliceSees = await until(alice, [sdk.RoomEvent.Timeline, sdk.RoomEvent.LocalEchoUpdated], settled(alice),
            "alice's timeline to hold the conversation", () => describeTimeline(alice.getRoom(roomId)));
        const bobSees = await until(bob, [sdk.RoomEvent.Timeline, sdk.RoomEvent.LocalEchoUpdated], settled(bob),
            "bob's timeline to hold the conversation", () => describeTimeline(bob.getRoom(roomId)));
        assert.deepEqual(aliceSees.map((e) => e.getContent().body), conversation, "alice's order");
        assert.deepEqual(bobSees.map((e) => e.getContent().body), conversation, "bob's order");
        assert.deepEqual(aliceSees.map((e) => e.getId()), bobSees.map((e) => e.getId()), "the same events on both servers");
        // Each client got the other's messages as live timeline events from its own server's /sync.
        assert.deepEqual(arrivals.bob.filter((e) => e.getSender() === aliceAccount.userId).map((e) => e.getContent().body),
            conversation.filter((l) => l.startsWith("alice")));
        assert.deepEqual(arrivals.alice.filter((e) => e.getSender() === bobAccount.userId).map((e) => e.getContent().body),
            conversation.filter((l) => l.startsWith("bob")));
        // Nobody's own messages came back twice.
        assert.equal(new Set(aliceSees.map((e) => e.getId())).size, conversation.length);
        assert.equal(new Set(bobSees.map((e) => e.getId())).size, conversation.length);
    });

    await t.test("bob leaves; alice's client sees him go, and his own shows the room left", async () => {
        const aliceSeesLeave = until(
            alice,
            [sdk.RoomMemberEvent.Membership],
            () => alice.getRoom(roomId).getMember(bobAccount.userId)?.membership === "leave",
            "alice's client to see bob leave",
            () => describeTimeline(alice.getRoom(roomId)),
        );
        await bob.leave(roomId);
        await aliceSeesLeave;
        const leave = alice.getRoom(roomId).getMember(bobAccount.userId).events.member;
        assert.equal(leave.getSender(), bobAccount.userId, "bob left by himself");
        assert.deepEqual(alice.getRoom(roomId).getJoinedMembers().map((m) => m.userId), [aliceAccount.userId]);
        await until(bob, [sdk.RoomEvent.MyMembership, sdk.ClientEvent.Sync], () => bob.getRoom(roomId)?.getMyMembership() === "leave",
            "bob's client to show the room as left", () => describeTimeline(bob.getRoom(roomId)));

        // What alice says next does not reach him.
        const { event_id: afterId } = await alice.sendTextMessage(roomId, "alice: bye bob");
        await until(alice, [sdk.RoomEvent.Timeline], () => alice.getRoom(roomId).findEventById(afterId),
            "the remote echo of alice's goodbye");
        assert.equal(bob.getRoom(roomId)?.findEventById(afterId), undefined);
    });
});
