-- Full-text search over message bodies, room names and topics: one row per indexed event,
-- mirrored into an external-content FTS5 table by triggers (so the insert is the same SQL on
-- both backends); redactions are honoured at query time by joining `events`.
CREATE TABLE event_search (
    id INTEGER PRIMARY KEY NOT NULL,   -- the FTS5 rowid; an alias of rowid so VACUUM keeps it
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    search_key TEXT NOT NULL,          -- content.body, content.name or content.topic
    body TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id);

-- Porter stemming, like PostgreSQL's 'english' configuration.
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    body, content = 'event_search', content_rowid = 'id', tokenize = 'porter unicode61'
);

CREATE TRIGGER event_search_insert AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, body) VALUES (new.id, new.body);
END;

CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;

-- Index what is already stored (accepted timeline events only).
INSERT INTO event_search (event_id, room_id, search_key, body)
SELECT event_id, room_id, search_key, json_extract(json, path)
FROM (
    SELECT event_id, room_id, json,
        CASE event_type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END AS search_key,
        CASE event_type WHEN 'm.room.message' THEN '$.content.body' WHEN 'm.room.name' THEN '$.content.name' ELSE '$.content.topic' END AS path
    FROM events
    WHERE stream_pos IS NOT NULL AND rejected_reason IS NULL AND soft_failed = 0
      AND (event_type = 'm.room.message' OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
) k
WHERE json_type(json, path) = 'text' AND json_extract(json, path) <> '';
