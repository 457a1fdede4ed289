-- Media of other servers, fetched over federation for local clients and kept: one row per
-- (origin, media ID), pointing at content in the same store as local media (by SHA-256), and
-- the thumbnails made here from it.

CREATE TABLE remote_media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    size BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id)
);

CREATE TABLE remote_media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated),
    FOREIGN KEY (origin, media_id) REFERENCES remote_media (origin, media_id) ON DELETE CASCADE
);
