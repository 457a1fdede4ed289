-- Pusher delivery progress, and indexes for the notifications list and the pusher.

-- The highest `events` stream position this pusher has been sent (or skipped) up to, so a
-- restart resumes instead of resending.
ALTER TABLE pushers ADD COLUMN last_stream_pos BIGINT NOT NULL DEFAULT 0;
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);

CREATE INDEX event_push_actions_user_pos ON event_push_actions (user_id, stream_pos);
