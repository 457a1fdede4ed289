// Foundation flows driven through matrix-js-sdk against a real weft server.
//
// Run by server/tests/it/js_sdk.rs with WEFT_URL set to the server's base URL. By hand:
//   WEFT_URL=http://127.0.0.1:8008 node --test foundation.test.mjs
//
// Sync is not implemented yet, so the client is never started: every step calls one of the
// SDK's request methods directly.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.env.WEFT_URL;
const serverName = process.env.WEFT_SERVER_NAME ?? "weft.test";

// The SDK logs at debug level by default; keep the test output readable.
logger.setLevel("warn");

/** Asserts that `promise` rejects with a MatrixError carrying `errcode` (and `status`, if given). */
async function rejectsWith(promise, errcode, status) {
    await assert.rejects(promise, (err) => {
        assert.ok(err instanceof sdk.MatrixError, `expected a MatrixError, got ${err}`);
        assert.equal(err.errcode, errcode, `errcode of ${JSON.stringify(err.data)}`);
        if (status !== undefined) assert.equal(err.httpStatus, status, `status of ${JSON.stringify(err.data)}`);
        return true;
    });
}

test("foundation flows through matrix-js-sdk", async (t) => {
    assert.ok(baseUrl, "WEFT_URL must be set to the homeserver's base URL");

    const username = `js_${randomBytes(6).toString("hex")}`;
    const password = `pw-${randomBytes(9).toString("base64url")}`;
    const userId = `@${username}:${serverName}`;
    const anon = sdk.createClient({ baseUrl });

    await t.test("versions", async () => {
        const versions = await anon.getVersions();
        assert.ok(Array.isArray(versions.versions), `versions: ${JSON.stringify(versions)}`);
        assert.ok(versions.versions.length > 0, `versions: ${JSON.stringify(versions)}`);
    });

    await t.test("username is available before registration", async () => {
        assert.equal(await anon.isUsernameAvailable(username), true);
    });

    let registration;
    await t.test("register with the m.login.dummy UIA dance", async () => {
        let session;
        await assert.rejects(anon.registerRequest({ username, password }), (err) => {
            assert.equal(err.httpStatus, 401, `first /register: ${err}`);
            assert.ok(Array.isArray(err.data?.flows), `UIA body: ${JSON.stringify(err.data)}`);
            assert.ok(
                err.data.flows.some((f) => Array.isArray(f.stages) && f.stages.includes("m.login.dummy")),
                `no m.login.dummy flow in ${JSON.stringify(err.data.flows)}`,
            );
            session = err.data.session;
            assert.equal(typeof session, "string", `UIA session in ${JSON.stringify(err.data)}`);
            return true;
        });
        registration = await anon.registerRequest({
            username,
            password,
            initial_device_display_name: "js-sdk registration",
            auth: { type: "m.login.dummy", session },
        });
        assert.equal(registration.user_id, userId);
        assert.equal(typeof registration.access_token, "string");
        assert.equal(typeof registration.device_id, "string");
    });

    await t.test("username is taken after registration", async () => {
        // The SDK turns the server's M_USER_IN_USE error into `false`.
        assert.equal(await anon.isUsernameAvailable(username), false);
    });

    await t.test("login with a wrong password is refused", async () => {
        await rejectsWith(
            anon.loginRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: username },
                password: `${password}-wrong`,
            }),
            "M_FORBIDDEN",
            403,
        );
    });

    let login;
    await t.test("login with m.login.password and a user identifier", async () => {
        const flows = await anon.loginFlows();
        assert.ok(
            flows.flows.some((f) => f.type === "m.login.password"),
            `login flows: ${JSON.stringify(flows)}`,
        );
        login = await anon.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: username },
            password,
            initial_device_display_name: "js-sdk login",
        });
        assert.equal(login.user_id, userId);
        assert.equal(typeof login.access_token, "string");
        assert.equal(typeof login.device_id, "string");
        assert.notEqual(login.access_token, registration.access_token);
        assert.notEqual(login.device_id, registration.device_id);
    });

    const client = sdk.createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
    });

    await t.test("whoami", async () => {
        const me = await client.whoami();
        assert.equal(me.user_id, userId);
        assert.equal(me.device_id, login.device_id);
    });

    await t.test("display name round-trips through the profile", async () => {
        const name = `JS Tester ${randomBytes(3).toString("hex")} ✓`;
        await client.setDisplayName(name);
        const profile = await client.getProfileInfo(userId);
        assert.equal(profile.displayname, name);
        const only = await client.getProfileInfo(userId, "displayname");
        assert.equal(only.displayname, name);
    });

    await t.test("devices list both the registration and the login device", async () => {
        const { devices } = await client.getDevices();
        assert.ok(Array.isArray(devices), `devices: ${JSON.stringify(devices)}`);
        const mine = devices.find((d) => d.device_id === login.device_id);
        assert.ok(mine, `login device ${login.device_id} missing from ${JSON.stringify(devices)}`);
        assert.equal(mine.display_name, "js-sdk login");
        assert.ok(
            devices.some((d) => d.device_id === registration.device_id),
            `registration device ${registration.device_id} missing from ${JSON.stringify(devices)}`,
        );
    });

    await t.test("logout invalidates only that token", async () => {
        await client.logout();
        await rejectsWith(client.whoami(), "M_UNKNOWN_TOKEN", 401);

        const other = sdk.createClient({
            baseUrl,
            accessToken: registration.access_token,
            userId: registration.user_id,
            deviceId: registration.device_id,
        });
        const me = await other.whoami();
        assert.equal(me.user_id, userId);
        assert.equal(me.device_id, registration.device_id);
        const { devices } = await other.getDevices();
        assert.ok(
            !devices.some((d) => d.device_id === login.device_id),
            `logged-out device ${login.device_id} still listed: ${JSON.stringify(devices)}`,
        );
    });
});
