// Room flows through matrix-js-sdk's own sync loop and room model (what Element Web runs),
// against a real weft server: join by alias, messages, typing, receipts, back-pagination,
// edits and redactions, each seen by the other user's client.
//
// Run by server/tests/it/js_sdk_rooms.rs with WEFT_URL set to the server's base URL. By hand:
//   WEFT_URL=http://127.0.0.1:8008 node --test --test-force-exit rooms.test.mjs
// (--test-force-exit: the SDK leaves a timer armed per request, ~110 s for a /sync, after
// stopClient; without it node idles that long after the last test.)

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.env.WEFT_URL;
const serverName = process.env.WEFT_SERVER_NAME ?? "weft.test";

/** How long any single wait may take: long enough for a /sync round trip, short enough to fail fast. */
const WAIT_MS = 5000;

// The SDK logs at debug level by default; warnings are kept because they point at server bugs.
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
 * Resolves with the arguments of the first `name` event from `emitter` that `predicate`
 * accepts. Call it before the action that should cause the event.
 */
function nextEvent(emitter, name, predicate, what, ms = WAIT_MS) {
    let listener;
    const timeout = deadline(what, ms, () => emitter.off(name, listener));
    const hit = new Promise((resolve, reject) => {
        listener = (...args) => {
            let ok;
            try {
                ok = predicate(...args);
            } catch (e) {
                ok = false;
                reject(e);
            }
            if (ok) {
                emitter.off(name, listener);
                timeout.cancel();
                resolve(args);
            }
        };
        emitter.on(name, listener);
    });
    return Promise.race([hit, timeout.promise]);
}

/**
 * Resolves with `check()`'s value once it is truthy, re-checking whenever `emitter` emits one
 * of `names` and every 100 ms (some model updates land after the event that caused them).
 * On timeout, the message includes `describe()`, the state that was seen last.
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

/**
 * A client for `account`, started with its sync loop, once the first sync is PREPARED. It is
 * added to `running` first, so that it is stopped at the end even when it never gets there.
 */
async function startClient(account, initialSyncLimit, running, options = {}) {
    const client = sdk.createClient({ baseUrl, ...account, ...options });
    running.add(client);
    // Keep every sync error, so a failed wait can say why the sync loop was stuck.
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
    // Element Web keeps local echoes out of the timeline until their remote echo comes down
    // /sync, so the timeline is in the server's order; do as it does.
    await client.startClient({ initialSyncLimit, pendingEventOrdering: sdk.PendingEventOrdering.Detached });
    await prepared;
    return client;
}

/** The room's live timeline as [type, body or state_key, event ID], for failure messages. */
function describeTimeline(room) {
    if (!room) return "no room";
    return JSON.stringify(
        room.getLiveTimeline().getEvents().map((e) => [e.getType(), e.getContent().body ?? e.getStateKey(), e.getId()]),
    );
}

/** m.room.message events of the live timeline (edits left out), oldest first. */
function messages(room) {
    return room
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getType() === "m.room.message" && !e.isRelation("m.replace"));
}

function isRemote(event) {
    return event.getId()?.startsWith("$") && event.status === null;
}

test("room flows through matrix-js-sdk's sync loop", { timeout: 120_000 }, async (t) => {
    assert.ok(baseUrl, "WEFT_URL must be set to the homeserver's base URL");

    const aliceAccount = await register("alice");
    const bobAccount = await register("bob");
    const running = new Set();
    t.after(() => running.forEach((c) => c.stopClient()));

    const alice = await startClient(aliceAccount, 20, running);
    let bob = await startClient(bobAccount, 20, running);

    const aliasLocalpart = `lobby_${randomBytes(4).toString("hex")}`;
    const alias = `#${aliasLocalpart}:${serverName}`;
    const roomName = "The Lobby ✓";
    let roomId;

    await t.test("alice creates a public room with an alias; bob joins by the alias", async () => {
        ({ room_id: roomId } = await alice.createRoom({
            preset: sdk.Preset.PublicChat,
            visibility: sdk.Visibility.Public,
            room_alias_name: aliasLocalpart,
            name: roomName,
        }));
        const aliceRoom = await until(
            alice,
            [sdk.RoomEvent.Timeline],
            () => {
                const room = alice.getRoom(roomId);
                return room?.getMyMembership() === "join" && room.name === roomName && room;
            },
            "alice to be joined to her room with its name",
            () => describeTimeline(alice.getRoom(roomId)),
        );
        assert.equal(aliceRoom.getCanonicalAlias(), alias, "canonical alias set by createRoom");

        const aliceSeesBob = nextEvent(
            alice,
            sdk.RoomMemberEvent.Membership,
            (_event, member) => member.roomId === roomId && member.userId === bobAccount.userId && member.membership === "join",
            "alice's client to see bob's join",
        );
        const joined = await bob.joinRoom(alias);
        assert.equal(joined.roomId, roomId, "joinRoom by alias resolves to the room");
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
        assert.equal(bobRoom.getCanonicalAlias(), alias);
        assert.equal(bobRoom.getMember(aliceAccount.userId)?.membership, "join", "bob sees alice as a member");
        await aliceSeesBob;
        assert.deepEqual(
            alice.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(),
            [aliceAccount.userId, bobAccount.userId].sort(),
        );
    });

    const conversation = ["alice: hi bob", "bob: hi alice", "alice: how are you?", "bob: fine, thanks"];

    await t.test("messages from both arrive in both clients' timelines in the same order", async () => {
        const arrivals = { alice: [], bob: [] };
        const listeners = [["alice", alice], ["bob", bob]].map(([name, client]) => {
            const listener = (event, room, toStart) => {
                if (room?.roomId === roomId && !toStart && event.getType() === "m.room.message") arrivals[name].push(event);
            };
            client.on(sdk.RoomEvent.Timeline, listener);
            return () => client.off(sdk.RoomEvent.Timeline, listener);
        });
        t.after(() => listeners.forEach((off) => off()));
        for (const line of conversation) {
            const client = line.startsWith("alice") ? alice : bob;
            await client.sendTextMessage(roomId, line);
        }
        const settled = (client) => () => {
            const list = messages(client.getRoom(roomId));
            return list.length >= conversation.length && list.every(isRemote) && list;
        };
        const aliceSees = await until(alice, [sdk.RoomEvent.Timeline, sdk.RoomEvent.LocalEchoUpdated], settled(alice),
            "alice's timeline to hold the conversation", () => describeTimeline(alice.getRoom(roomId)));
        const bobSees = await until(bob, [sdk.RoomEvent.Timeline, sdk.RoomEvent.LocalEchoUpdated], settled(bob),
            "bob's timeline to hold the conversation", () => describeTimeline(bob.getRoom(roomId)));
        assert.deepEqual(aliceSees.map((e) => e.getContent().body), conversation, "alice's order");
        assert.deepEqual(bobSees.map((e) => e.getContent().body), conversation, "bob's order");
        assert.deepEqual(aliceSees.map((e) => e.getId()), bobSees.map((e) => e.getId()), "same events on both sides");
        // Each client got the other's messages as RoomEvent.Timeline events from /sync.
        assert.deepEqual(arrivals.bob.filter((e) => e.getSender() === aliceAccount.userId).map((e) => e.getContent().body),
            conversation.filter((l) => l.startsWith("alice")));
        assert.deepEqual(arrivals.alice.filter((e) => e.getSender() === bobAccount.userId).map((e) => e.getContent().body),
            conversation.filter((l) => l.startsWith("bob")));
        // Own messages came back once (the remote echo replaced the local echo, no duplicate).
        assert.equal(new Set(aliceSees.map((e) => e.getId())).size, conversation.length);
    });

    await t.test("typing notifications reach the other client", async () => {
        const isAlice = (member) => member.roomId === roomId && member.userId === aliceAccount.userId;
        const starts = nextEvent(bob, sdk.RoomMemberEvent.Typing, (_e, m) => isAlice(m) && m.typing, "bob to see alice typing");
        await alice.sendTyping(roomId, true, 5000);
        const [typingEvent] = await starts;
        assert.deepEqual(typingEvent.getContent().user_ids, [aliceAccount.userId]);
        assert.equal(bob.getRoom(roomId).getMember(aliceAccount.userId).typing, true);

        const stops = nextEvent(bob, sdk.RoomMemberEvent.Typing, (_e, m) => isAlice(m) && !m.typing, "bob to see alice stop typing");
        await alice.sendTyping(roomId, false, 0);
        await stops;
        assert.equal(bob.getRoom(roomId).getMember(aliceAccount.userId).typing, false);
    });

    const question = "alice: did you read this?";

    await t.test("bob's read receipt reaches alice", async () => {
        // Bob reads Alice's newest message (the SDK keeps a receipt on an older event hidden
        // behind the implicit one on Bob's own later message).
        const { event_id: targetId } = await alice.sendTextMessage(roomId, question);
        const target = await until(bob, [sdk.RoomEvent.Timeline], () => bob.getRoom(roomId).findEventById(targetId),
            "bob to receive alice's question", () => describeTimeline(bob.getRoom(roomId)));
        const aliceCopy = await until(alice, [sdk.RoomEvent.Timeline], () => alice.getRoom(roomId).findEventById(targetId),
            "the remote echo of alice's question", () => describeTimeline(alice.getRoom(roomId)));
        const hasBobsReceipt = () =>
            alice.getRoom(roomId).getReceiptsForEvent(aliceCopy)
                .some((r) => r.userId === bobAccount.userId && r.type === sdk.ReceiptType.Read);
        assert.equal(hasBobsReceipt(), false, "no receipt from bob before he sends one");
        const received = nextEvent(alice, sdk.RoomEvent.Receipt, (event, room) =>
            room.roomId === roomId && Object.keys(event.getContent()).includes(targetId), "alice to receive bob's receipt");
        await bob.sendReadReceipt(target);
        const [receiptEvent] = await received;
        assert.ok(receiptEvent.getContent()[targetId]?.["m.read"]?.[bobAccount.userId]?.ts > 0,
            `receipt content: ${JSON.stringify(receiptEvent.getContent())}`);
        assert.ok(hasBobsReceipt(), "room.getReceiptsForEvent lists bob's m.read");
        assert.equal(alice.getRoom(roomId).getEventReadUpTo(bobAccount.userId), targetId);
    });

    const backlog = Array.from({ length: 30 }, (_, i) => `backlog ${i}`);

    await t.test("a fresh client back-paginates to the room's creation", async () => {
        for (const line of backlog) await alice.sendTextMessage(roomId, line);

        // Bob starts over: a new client (empty store) with a short initial sync.
        bob.stopClient();
        running.delete(bob);
        bob = await startClient(bobAccount, 5, running);
        const room = bob.getRoom(roomId);
        assert.ok(room, "the room is in bob's initial sync");
        const initial = room.getLiveTimeline().getEvents();
        assert.ok(initial.length <= 5, `initialSyncLimit 5, got ${describeTimeline(room)}`);
        assert.equal(initial.at(-1).getContent().body, backlog.at(-1), "the newest message is last");
        assert.notEqual(room.oldState.paginationToken, null, "a limited timeline has a prev_batch");

        for (let page = 0; room.oldState.paginationToken !== null; page++) {
            assert.ok(page < 10, `still paginating after 10 pages: ${describeTimeline(room)}`);
            const step = deadline(`scrollback page ${page}`, WAIT_MS);
            await Promise.race([bob.scrollback(room, 30), step.promise]).finally(step.cancel);
        }

        const events = room.getLiveTimeline().getEvents();
        assert.equal(events[0].getType(), "m.room.create", `timeline starts at the creation: ${describeTimeline(room)}`);
        const ids = events.map((e) => e.getId());
        assert.equal(new Set(ids).size, ids.length, `no event twice: ${describeTimeline(room)}`);
        assert.deepEqual(messages(room).map((e) => e.getContent().body), [...conversation, question, ...backlog]);
        const memberships = events.filter((e) => e.getType() === "m.room.member").map((e) => e.getStateKey());
        assert.deepEqual(memberships, [aliceAccount.userId, bobAccount.userId], "alice's join, then bob's");
        assert.equal(room.name, roomName, "room state survives the fresh start");
    });

    let editedId, editId, redactedId;

    await t.test("an edit replaces the content in the other client", async () => {
        const original = messages(alice.getRoom(roomId)).find((e) => e.getContent().body === backlog[3]);
        const originalId = (editedId = original.getId());
        ({ event_id: editId } = await alice.sendMessage(roomId, {
            msgtype: "m.text",
            body: `* ${backlog[3]} (edited)`,
            "m.new_content": { msgtype: "m.text", body: `${backlog[3]} (edited)` },
            "m.relates_to": { rel_type: "m.replace", event_id: originalId },
        }));
        const seen = await until(
            bob,
            [sdk.RoomEvent.Timeline],
            () => {
                const event = bob.getRoom(roomId).findEventById(originalId);
                return event?.replacingEventId() === editId && event;
            },
            "bob's copy of the message to be replaced by alice's edit",
            () => JSON.stringify(bob.getRoom(roomId).findEventById(originalId)?.toJSON()),
        );
        assert.equal(seen.getContent().body, `${backlog[3]} (edited)`);
        assert.equal(seen.getOriginalContent().body, backlog[3]);
        assert.equal(seen.replacingEvent().getId(), editId);
        // The edit itself is no new message: the timeline reads as before, with the new text.
        const edited = backlog.map((line, i) => (i === 3 ? `${line} (edited)` : line));
        assert.deepEqual(messages(bob.getRoom(roomId)).map((e) => e.getContent().body), [...conversation, question, ...edited]);
    });

    await t.test("a redaction empties the message in the other client", async () => {
        const target = messages(alice.getRoom(roomId)).find((e) => e.getContent().body === backlog[7]);
        const targetId = (redactedId = target.getId());
        const untouched = bob.getRoom(roomId).findEventById(targetId);
        assert.equal(untouched?.isRedacted(), false, "bob has the message, not yet redacted");
        const { event_id: redactionId } = await alice.redactEvent(roomId, targetId, undefined, { reason: "oops" });
        const redacted = await until(
            bob,
            [sdk.RoomEvent.Timeline, sdk.RoomEvent.Redaction],
            () => {
                const event = bob.getRoom(roomId).findEventById(targetId);
                return event?.isRedacted() && event;
            },
            "bob's copy of the message to be redacted",
            () => JSON.stringify(bob.getRoom(roomId).findEventById(targetId)?.toJSON()),
        );
        assert.deepEqual(redacted.getContent(), {});
        assert.equal(redacted.getUnsigned().redacted_because?.event_id, redactionId);
        assert.equal(redacted.getUnsigned().redacted_because?.content?.reason, "oops");
        // Neighbours are untouched.
        assert.equal(messages(bob.getRoom(roomId)).find((e) => e.getContent().body === backlog[8])?.isRedacted(), false);
    });

    await t.test("a fresh client jumping to the messages sees the edit and the redaction", async () => {
        // As Element does for a permalink: /context around the edited message, with only the
        // redaction in the initial sync, so the edit itself is never loaded: the new content
        // can only come from the server's bundled m.replace, the empty one from its redaction.
        bob.stopClient();
        running.delete(bob);
        bob = await startClient(bobAccount, 1, running, { timelineSupport: true });
        const room = bob.getRoom(roomId);
        assert.ok(!room.findEventById(editId), `the edit is not in the initial sync: ${describeTimeline(room)}`);
        const step = deadline("/context around the edited message", WAIT_MS);
        const timeline = await Promise.race([bob.getEventTimeline(room.getUnfilteredTimelineSet(), editedId), step.promise])
            .finally(step.cancel);
        const events = timeline.getEvents();
        const describe = JSON.stringify(events.map((e) => [e.getId(), e.getContent().body]));
        const edited = events.find((e) => e.getId() === editedId);
        assert.ok(edited, `the message is in its context: ${describe}`);
        assert.equal(edited.replacingEventId(), editId, `bundled edit of ${JSON.stringify(edited.getUnsigned())}`);
        assert.equal(edited.getContent().body, `${backlog[3]} (edited)`);
        assert.equal(edited.getOriginalContent().body, backlog[3]);
        const redacted = events.find((e) => e.getId() === redactedId);
        assert.ok(redacted, `the redacted message is in the context: ${describe}`);
        assert.ok(redacted.isRedacted(), `redacted: ${JSON.stringify(redacted.toJSON())}`);
        assert.deepEqual(redacted.getContent(), {});
        // Context is in timeline order around the message.
        assert.deepEqual(
            events.filter((e) => e.getType() === "m.room.message").map((e) => e.getId() === redactedId ? null : e.getContent().body),
            messages(alice.getRoom(roomId))
                .filter((e) => events.some((x) => x.getId() === e.getId()))
                .map((e) => e.getId() === redactedId ? null : e.getContent().body),
        );
    });
});
