-- Timelines page in topological order, (depth, stream position), as /messages and /context
-- read them.
CREATE INDEX events_room_topological ON events (room_id, depth, stream_pos);
-- Events backfilled from other servers take negative positions, counting down from -1, so that
-- sync, which reads positions above a token, never mistakes old history for new events.
INSERT INTO stream_positions (stream, pos) VALUES ('backfill', 0);
