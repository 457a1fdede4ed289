-- The media repository: one row per media ID, pointing at content stored on disk by its
-- SHA-256 (identical content is stored once); generated thumbnails; cached URL previews.

CREATE TABLE media (
    media_id TEXT PRIMARY KEY NOT NULL,
    -- NULL while a media ID made by /create waits for its upload.
    sha256 TEXT,
    content_type TEXT,
    filename TEXT,
    size BIGINT NOT NULL DEFAULT 0,
    uploader TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT,
    -- When an unused /create media ID stops being valid.
    unused_expires_ts BIGINT,
    -- Uploaded while authenticated media was enforced: refused by the legacy endpoints.
    authenticated BIGINT NOT NULL DEFAULT 1,
    -- Fetched for a URL preview rather than uploaded (outside the uploader's quota).
    url_preview BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX media_uploader ON media (uploader);

CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL REFERENCES media (media_id) ON DELETE CASCADE,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method, animated)
);

CREATE TABLE media_url_previews (
    url TEXT PRIMARY KEY NOT NULL,
    -- The OpenGraph JSON answered for it.
    og TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
