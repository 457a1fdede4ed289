-- The event graph. Canonical event JSON is stored once in `events`; everything else indexes it.

INSERT INTO stream_positions (stream, pos) VALUES ('events', 0);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public INTEGER NOT NULL DEFAULT 0,       -- listed in the public room directory
    current_state_group INTEGER,
    last_stream_pos INTEGER NOT NULL DEFAULT 0, -- bump stamp; also the row every writer locks
    created_ts INTEGER NOT NULL
);

CREATE TABLE events (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos INTEGER UNIQUE,             -- NULL until committed into the timeline, and for outliers
    depth INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    json TEXT NOT NULL,                    -- the PDU as signed
    outlier INTEGER NOT NULL DEFAULT 0,
    rejected_reason TEXT,
    soft_failed INTEGER NOT NULL DEFAULT 0,
    state_before INTEGER,                  -- state group before the event
    state_after INTEGER,                   -- state group after the event
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
    group_id INTEGER PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    parent_group INTEGER,
    chain_len INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    group_id INTEGER NOT NULL,
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
    stream_pos INTEGER NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    forgotten INTEGER NOT NULL DEFAULT 0,
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

CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    reporter TEXT NOT NULL,
    reason TEXT,
    score INTEGER,
    created_ts INTEGER NOT NULL
);
