-- Receipts, notification counts, push rules and pushers.

INSERT INTO stream_positions (stream, pos) VALUES ('receipts', 0);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,          -- '' for an unthreaded receipt
    event_id TEXT NOT NULL,
    event_stream_pos BIGINT NOT NULL, -- position of the receipted event
    ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_pos);

-- What push rule evaluation decided for each member and event.
CREATE TABLE event_push_actions (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    thread_id TEXT NOT NULL,          -- 'main' or the thread root
    notify BIGINT NOT NULL,
    highlight BIGINT NOT NULL,
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_pos);

-- A user's push rules as one ruleset document (server defaults merged with their changes).
CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY NOT NULL,
    ruleset TEXT NOT NULL
);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,               -- the whole pusher JSON as set by the client
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
