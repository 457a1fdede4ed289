-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and
-- signatures, device-list changes, to-device messages, server-side key backup, dehydrated devices.

INSERT INTO stream_positions (stream, pos) VALUES ('to_device', 0), ('device_lists', 0);

-- The signed device_keys object a device uploaded (signatures by others live in e2e_signatures).
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,             -- the full "<algorithm>:<id>"
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- One fallback key per device and algorithm; `used` once a claim handed it out.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- key_type: master, self_signing, user_signing. public_key: the unpadded base64 ed25519 key.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through /keys/signatures/upload. target_key is a device ID or a
-- cross-signing public key of target_user; signer_key is "ed25519:<id>".
CREATE TABLE e2e_signatures (
    target_user TEXT NOT NULL,
    target_key TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key)
);

-- A row per change of a user's devices or keys, on the device_lists stream.
CREATE TABLE device_list_changes (
    stream_pos BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (stream_pos, user_id)
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_pos);

CREATE TABLE to_device_messages (
    recipient_user TEXT NOT NULL,
    recipient_device TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    seq BIGINT NOT NULL,             -- order within one send
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (recipient_user, recipient_device, stream_pos, seq)
);

-- Transaction IDs of /sendToDevice, for idempotency per sending device.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,          -- {"algorithm", "auth_data"} as the client sent it
    etag BIGINT NOT NULL DEFAULT 0,  -- bumped whenever the version's keys change
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BIGINT NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- At most one dehydrated device per user (MSC3814); the device itself is in `devices`.
CREATE TABLE dehydrated_devices (
    user_id TEXT PRIMARY KEY NOT NULL,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
