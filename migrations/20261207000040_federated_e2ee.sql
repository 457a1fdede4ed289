-- End-to-end encryption across servers (core/src/e2ee/remote.rs, core/src/outbox/device_lists.rs).

-- Outgoing device list updates. The tailer reads the `device_lists` stream after its position
-- and, for each local user who changed, compares what other servers were last told (below)
-- with the user's devices now; what differs goes out as EDUs. It starts at the stream's
-- current position: earlier changes were never federated and other servers resync on demand.
CREATE TABLE device_list_outbound_tail (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 0),
    pos BIGINT NOT NULL
);
INSERT INTO device_list_outbound_tail (id, pos)
    SELECT 0, pos FROM stream_positions WHERE stream = 'device_lists';

-- Per local user: the stream ID of the last update sent (the `prev_id` of the next one, and
-- the `stream_id` that `/user/devices` answers) and a digest of the cross-signing keys sent.
CREATE TABLE device_list_outbound_users (
    user_id TEXT PRIMARY KEY NOT NULL,
    stream_id BIGINT NOT NULL,
    signing_digest TEXT NOT NULL DEFAULT ''
);

-- Per local device with keys: a digest of what other servers were last told of it.
CREATE TABLE device_list_outbound_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Other servers' users whose device lists this server keeps, kept current by
-- m.device_list_update EDUs: the last stream ID applied, and whether the copy is known to be
-- behind (a gap in the prev_id chain, or a resync that failed), in which case queries ask the
-- user's server instead.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY NOT NULL,
    stream_id BIGINT NOT NULL,
    stale BIGINT NOT NULL DEFAULT 0,
    updated_ts BIGINT NOT NULL
);

-- Their devices, with the keys as their server serves them.
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    keys_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Their cross-signing keys ('master', 'self_signing'), from resyncs and m.signing_key_update.
CREATE TABLE remote_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- m.direct_to_device EDUs delivered, so that one sent again is delivered once.
CREATE TABLE to_device_inbound (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX to_device_inbound_ts ON to_device_inbound (received_ts);
