CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    reporter TEXT NOT NULL,
    reason TEXT,
    score INTEGER,
    created_ts INTEGER NOT NULL
);
