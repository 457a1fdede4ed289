-- Push actions keyed by how they are read: a user's actions in a room in stream order (unread
-- counts), plus one index by stream position (notifications, pushers). Clustered on that key,
-- a row costs two b-tree inserts instead of four (rowid table, the former (user, event) key,
-- and two indexes); an event's position identifies it, so the key stays unique.
CREATE TABLE event_push_actions_keyed (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    notify INTEGER NOT NULL,
    highlight INTEGER NOT NULL,
    actions TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_pos)
) WITHOUT ROWID;
INSERT INTO event_push_actions_keyed
SELECT room_id, event_id, user_id, stream_pos, thread_id, notify, highlight, actions, ts FROM event_push_actions;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_keyed RENAME TO event_push_actions;
CREATE INDEX event_push_actions_user_pos ON event_push_actions (user_id, stream_pos);
