-- A room's forward extremities live in its row, as a JSON array of event IDs: the statement
-- that locks the room to add an event returns them, fresh, in the same round trip (a
-- subquery would read the snapshot taken before the lock was granted).
ALTER TABLE rooms ADD COLUMN forward_extremities TEXT NOT NULL DEFAULT '[]';
UPDATE rooms SET forward_extremities = COALESCE(
    (SELECT json_agg(event_id ORDER BY event_id)::text FROM forward_extremities f WHERE f.room_id = rooms.room_id),
    '[]');
DROP TABLE forward_extremities;
