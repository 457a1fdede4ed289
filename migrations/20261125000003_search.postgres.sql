-- Full-text search over message bodies, room names and topics: one row per indexed event.
-- The text is kept so the tsvector can be a generated column (the insert is then the same SQL
-- on both backends); redactions are honoured at query time by joining `events`.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    search_key TEXT NOT NULL,          -- content.body, content.name or content.topic
    body TEXT NOT NULL,
    vector tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id);

-- Index what is already stored (accepted timeline events only).
INSERT INTO event_search (event_id, room_id, search_key, body)
SELECT event_id, room_id, k.search_key, k.body
FROM (
    SELECT event_id, room_id,
        CASE event_type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END AS search_key,
        CASE event_type WHEN 'm.room.message' THEN json::jsonb -> 'content' ->> 'body'
                        WHEN 'm.room.name' THEN json::jsonb -> 'content' ->> 'name'
                        ELSE json::jsonb -> 'content' ->> 'topic' END AS body,
        CASE event_type WHEN 'm.room.message' THEN jsonb_typeof(json::jsonb -> 'content' -> 'body')
                        WHEN 'm.room.name' THEN jsonb_typeof(json::jsonb -> 'content' -> 'name')
                        ELSE jsonb_typeof(json::jsonb -> 'content' -> 'topic') END AS body_type
    FROM events
    WHERE stream_pos IS NOT NULL AND rejected_reason IS NULL AND soft_failed = 0
      AND (event_type = 'm.room.message' OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
) k
WHERE k.body_type = 'string' AND k.body <> ''
ON CONFLICT DO NOTHING;
