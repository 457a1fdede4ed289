-- Thumbnails of other servers' media fetched from those servers (the federation thumbnail
-- endpoint), kept without the original: one row per size asked for, pointing at content in
-- the media store by SHA-256.

CREATE TABLE remote_media_fetched_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);
