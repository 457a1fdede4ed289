-- Presence: one row per user, on the `presence` stream.
INSERT INTO stream_positions (stream, pos) VALUES ('presence', 0);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,              -- online, unavailable, offline
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_pos);
