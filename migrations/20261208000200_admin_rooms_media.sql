-- Administration of rooms and media (the admin API).

-- Media an admin quarantined (the admin's user ID): clients and other servers are answered 404.
-- `safe_from_quarantine`: protected by an admin from quarantine and from deletion by age.
ALTER TABLE media ADD COLUMN quarantined_by TEXT;
ALTER TABLE media ADD COLUMN safe_from_quarantine BIGINT NOT NULL DEFAULT 0;
ALTER TABLE remote_media ADD COLUMN quarantined_by TEXT;

-- Rooms local users may not join (nor be invited to), and the admin who blocked each.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Room deletions, run in the background and polled by admins. `status` is one of
-- 'shutting_down', 'purging', 'complete', 'failed'; `params` the request as JSON; `result`
-- the shutdown's outcome as JSON (kicked users, aliases moved, the new room).
CREATE TABLE room_deletions (
    delete_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX room_deletions_room ON room_deletions (room_id, created_ts);

-- The outbox position of the last transaction a destination acknowledged (Synapse's
-- `last_successful_stream_ordering`, for admins).
ALTER TABLE federation_destinations ADD COLUMN last_success_pos BIGINT;
