-- Push actions keyed by how they are read: a user's actions in a room in stream order (unread
-- counts), plus the index by stream position (notifications, pushers). The key replaces the
-- former (user, event) key and the (user, room, position) index: one index fewer per row. An
-- event's position identifies it, so the key stays unique.
ALTER TABLE event_push_actions DROP CONSTRAINT event_push_actions_pkey;
DROP INDEX event_push_actions_room;
ALTER TABLE event_push_actions ADD PRIMARY KEY (user_id, room_id, stream_pos);
