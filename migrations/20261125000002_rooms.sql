-- The event graph. Canonical event JSON is stored once in `events`; everything else indexes it.

INSERT INTO stream_positions (stream, pos) VALUES ('events', 0);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public BIGINT NOT NULL DEFAULT 0,       -- listed in the public room directory
    current_state_group BIGINT,
    last_stream_pos BIGINT NOT NULL DEFAULT 0, -- bump stamp; also the row every writer locks
    created_ts BIGINT NOT NULL
);

CREATE TABLE events (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos BIGINT UNIQUE,             -- NULL until committed into the timeline, and for outliers
    depth BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,                    -- the PDU as signed
    outlier BIGINT NOT NULL DEFAULT 0,
    rejected_reason TEXT,
    soft_failed BIGINT NOT NULL DEFAULT 0,
    state_before BIGINT,                  -- state group before the event
    state_after BIGINT,                   -- state group after the event
    redacted_by TEXT,
    txn_user TEXT,                         -- for the sender's unsigned.transaction_id
    txn_device TEXT,
    txn_id TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_pos);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
CREATE UNIQUE INDEX events_txn ON events (txn_user, txn_device, txn_id, room_id);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State snapshots: a group is its parent plus a small delta; chains are kept short.
CREATE TABLE state_groups (
    group_id BIGINT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    parent_group BIGINT,
    chain_len BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    group_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,                         -- NULL removes the key inherited from the parent
    PRIMARY KEY (group_id, event_type, state_key)
);

-- Current state, indexed for fast reads.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    forgotten BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    aggregation_key TEXT
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type);

