-- The outbound federation queue (core/src/outbox). The tailer reads live events from the
-- `events` stream and queues each for the servers it must reach; EDUs are queued directly.
-- A destination's sender sends its rows in position order and deletes them once the
-- destination acknowledged the transaction that carried them.

-- Positions of queued rows: allocated with `streams::next_pos`, whose row lock orders the
-- writers' commits, so the rows a reader sees always form a prefix of the positions.
INSERT INTO stream_positions (stream, pos) VALUES ('federation_outbox', 0);

-- What is still to be sent, per destination. A PDU is its event ID (the signed JSON stays in
-- `events`); an EDU is its JSON. One event takes one position for all its destinations.
CREATE TABLE federation_outbox (
    destination TEXT NOT NULL,
    pos BIGINT NOT NULL,
    kind TEXT NOT NULL,                 -- 'pdu' or 'edu'
    event_id TEXT,                      -- for a PDU
    edu_json TEXT,                      -- for an EDU: {"edu_type": ..., "content": ...}
    PRIMARY KEY (destination, pos)
);

-- How far the tailer has read the `events` stream: one row. It starts at the stream's current
-- position, so a server that already has history does not send it all again on upgrade.
CREATE TABLE federation_outbox_tail (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 0),
    events_pos BIGINT NOT NULL
);
INSERT INTO federation_outbox_tail (id, events_pos)
    SELECT 0, pos FROM stream_positions WHERE stream = 'events';

-- Per destination: backoff after failures, the last success and error (for admins), and the
-- transaction in flight (its last row), so a resend after a crash is the same transaction
-- with the same ID.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY NOT NULL,
    retry_count BIGINT NOT NULL DEFAULT 0,
    retry_after_ts BIGINT NOT NULL DEFAULT 0,
    last_success_ts BIGINT,
    last_failure_ts BIGINT,
    last_error TEXT,
    txn_last_pos BIGINT
);

-- Leases: a named piece of work (the tailer, one destination's sender) done by one process at
-- a time. A holder renews its lease before `expires_ts`; an expired lease may be taken over.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
